//! `autokey-api token create|revoke`.

use autokey_shared::{
    model::Role,
    store::{
        audit::{self, Actor},
        tokens,
    },
};
use clap::Subcommand;
use uuid::Uuid;

#[derive(Subcommand)]
pub enum TokenAction {
    /// Print a new token alone on stdout (a new subject id, when generated, goes to stderr).
    Create {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The seller, buyer or storefront id this token acts as (generated when omitted).
        #[arg(long)]
        subject: Option<Uuid>,
    },
    /// Revoke a token by its id (every api process refuses it on its next request).
    Revoke { id: Uuid },
}

/// The operator at the command line: acts with the database's authority, as an admin.
const OPERATOR: Actor = Actor {
    role: Role::Admin,
    subject: None,
    token_id: None,
};

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|_| format!("unknown role {s:?} (expected seller, buyer, storefront or admin)"))
}

pub async fn run(action: TokenAction) -> Result<(), String> {
    let pool = super::connect(2).await?;
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    match action {
        TokenAction::Create { role, subject } => {
            if subject.is_some() && !role.has_subject() {
                return Err(format!("--subject is not for {role} tokens"));
            }
            let created = tokens::create_token(&mut conn, role, subject)
                .await
                .map_err(|e| e.to_string())?;
            if subject.is_none()
                && let Some(s) = created.subject
            {
                eprintln!("{role} id: {s}");
            }
            audit::append(
                &mut conn,
                &OPERATOR,
                "token.created",
                None,
                serde_json::json!({"via": "cli", "tokenId": created.id, "role": role}),
            )
            .await
            .map_err(|e| e.to_string())?;
            eprintln!("token id: {}", created.id);
            println!("{}", created.token);
            Ok(())
        }
        TokenAction::Revoke { id } => {
            if tokens::revoke_token(&mut conn, id)
                .await
                .map_err(|e| e.to_string())?
            {
                audit::append(
                    &mut conn,
                    &OPERATOR,
                    "token.revoked",
                    None,
                    serde_json::json!({"via": "cli", "tokenId": id}),
                )
                .await
                .map_err(|e| e.to_string())?;
                eprintln!("token {id} revoked");
                Ok(())
            } else {
                Err(format!("no live token with id {id}"))
            }
        }
    }
}
