-- Sign-in with an OpenID Connect provider (API.md): each account of a configured issuer,
-- (issuer, sub), maps to one stable autokey id, made the first time it is seen. That id is
-- the seller, buyer or storefront id its tokens act as, so every tenant rule that holds for
-- autokey's own tokens holds for the provider's.
CREATE TABLE oidc_identities (
    id         uuid PRIMARY KEY,
    issuer     text NOT NULL,
    subject    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT oidc_identities_subject_unique UNIQUE (issuer, subject)
);

-- The console's sign-in sessions are tokens that expire with the provider's token they
-- were made from; the operator's tokens never expire (NULL).
ALTER TABLE api_tokens ADD COLUMN expires_at timestamptz;
