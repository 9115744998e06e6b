//! Accounts of OpenID Connect providers: (issuer, sub) -> one stable autokey id, made on
//! first use. The id is the seller, buyer or storefront id the account's tokens act as.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{model::Role, store::tokens};

pub const FIND: &str = "SELECT id FROM oidc_identities WHERE issuer = $1 AND subject = $2";

/// Inserts the account, or returns the id a concurrent first use gave it (the no-op
/// update makes the existing row's id come back).
const INSERT: &str = "INSERT INTO oidc_identities (id, issuer, subject) VALUES ($1, $2, $3)
     ON CONFLICT ON CONSTRAINT oidc_identities_subject_unique
     DO UPDATE SET issuer = EXCLUDED.issuer RETURNING id";

/// The autokey id of `subject` at `issuer`, made on first use, with the principal row of
/// `role` (a seller, buyer or storefront row) made if missing.
pub async fn resolve(
    conn: &mut PgConnection,
    issuer: &str,
    subject: &str,
    role: Role,
) -> Result<Uuid, sqlx::Error> {
    let found: Option<Uuid> = sqlx::query_scalar(FIND)
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&mut *conn)
        .await?;
    let id = match found {
        Some(id) => id,
        None => {
            sqlx::query_scalar(INSERT)
                .bind(Uuid::now_v7())
                .bind(issuer)
                .bind(subject)
                .fetch_one(&mut *conn)
                .await?
        }
    };
    tokens::ensure_principal(conn, role, id).await?;
    Ok(id)
}
