-- Storefronts are tenants: a storefront token acts as one storefront (its subject), an
-- order records the storefront that placed it, and a storefront sees only its own orders.
CREATE TABLE storefronts (
    id         uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Tokens minted before this had no subject: each becomes its own storefront.
INSERT INTO storefronts (id) SELECT id FROM api_tokens WHERE role = 'storefront';
UPDATE api_tokens SET subject_id = id WHERE role = 'storefront' AND subject_id IS NULL;
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_subject_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_subject_check
    CHECK ((role IN ('seller', 'buyer', 'storefront')) = (subject_id IS NOT NULL));

-- Null for orders placed with a buyer token (and for orders placed before this: which
-- storefront placed them is not known, so no storefront sees them).
ALTER TABLE orders ADD COLUMN storefront_id uuid REFERENCES storefronts (id);
