// The OpenID provider of tests/tests/oidc.rs: oidc-provider (OpenID Certified), unchanged,
// on a local port with keys made here at start. Only its configuration is ours.
//
//   node provider.js --audience URI --keys FILE
//
// Prints one JSON line on stdout once listening: {"issuer": "http://127.0.0.1:PORT"}.
// FILE receives the signing keys (kid, alg, PEM private key and public JWK) so the test can
// sign the tokens the provider will not mint (expired, wrong audience, ...) with them.
//
// Clients:
//   storefront-rs256 / -es256 / -eddsa (secret "secret-<alg>"): client credentials; their
//     access tokens are JWTs for the audience signed with that algorithm, role storefront;
//   storefront-norole: client credentials, access tokens without a role claim;
//   autokey-console: public client (PKCE), authorization code, redirect URIs set by the test;
//   seller-cli: confidential client (secret "secret-cli"), authorization code, redirect URI
//     http://127.0.0.1/cb (never fetched: the test reads the code off the Location header).
// Accounts: any login (the provider's own development login page); the role claim of
// their access tokens follows the login's prefix: seller*, buyer*, admin*, anything else
// none.
//
// Test-only routes (outside the provider): POST /__test/rotate makes new keys (published
// first, so they sign; the old ones stay published), POST /__test/redirect-uris with a
// JSON array sets the console's redirect URIs, GET /__test/jwks-hits counts the requests
// for its key set.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith('--')) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const audience = args.audience;
const keysFile = args.keys;
if (!audience || !keysFile) {
  console.error('usage: node provider.js --audience URI --keys FILE');
  process.exit(2);
}

const ROLE_CLAIM = 'autokey_role';

function makeKeys() {
  const kinds = [
    ['RS256', () => generateKeyPairSync('rsa', { modulusLength: 2048 })],
    ['ES256', () => generateKeyPairSync('ec', { namedCurve: 'P-256' })],
    ['EdDSA', () => generateKeyPairSync('ed25519')],
  ];
  return kinds.map(([alg, generate]) => {
    const { privateKey, publicKey } = generate();
    const kid = `${alg.toLowerCase()}-${randomUUID()}`;
    return {
      alg,
      kid,
      privateJwk: { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' },
      publicJwk: { ...publicKey.export({ format: 'jwk' }), kid, alg, use: 'sig' },
      pem: privateKey.export({ format: 'pem', type: 'pkcs8' }),
    };
  });
}

function roleOf(accountId) {
  for (const role of ['seller', 'buyer', 'admin']) {
    if (accountId.startsWith(role)) return role;
  }
  return undefined;
}

function storefront(alg, role = 'storefront') {
  return {
    client_id: `storefront-${alg.toLowerCase()}`,
    client_secret: `secret-${alg.toLowerCase()}`,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    access_token_alg: alg,
    autokey_role: role,
  };
}

function configuration(keys, consoleRedirectUris) {
  return {
    clients: [
      storefront('RS256'),
      storefront('ES256'),
      storefront('EdDSA'),
      { ...storefront('RS256'), client_id: 'storefront-norole', client_secret: 'secret-norole', autokey_role: undefined },
      {
        client_id: 'autokey-console',
        token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code'],
        response_types: ['code'],
        redirect_uris: consoleRedirectUris,
        access_token_alg: 'ES256',
      },
      {
        client_id: 'seller-cli',
        client_secret: 'secret-cli',
        grant_types: ['authorization_code'],
        response_types: ['code'],
        redirect_uris: ['http://127.0.0.1/cb'],
        access_token_alg: 'RS256',
      },
    ],
    extraClientMetadata: { properties: ['autokey_role', 'access_token_alg'] },
    jwks: { keys: keys.map((k) => k.privateJwk) },
    cookies: { keys: ['autokey-oidc-test-cookie-key'] },
    findAccount: (_ctx, accountId) => ({ accountId, claims: () => ({ sub: accountId }) }),
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => audience,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, _indicator, client) => ({
          scope: 'api',
          audience,
          accessTokenTTL: 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: client.access_token_alg || 'RS256' } },
        }),
      },
    },
    // A first-party console: no consent screen (the login page is the provider's own).
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid');
      grant.addResourceScope(audience, 'api');
      await grant.save();
      return grant;
    },
    async extraTokenClaims(ctx, token) {
      const role = token.kind === 'ClientCredentials'
        ? ctx.oidc.client?.autokey_role
        : roleOf(token.accountId || '');
      return role ? { [ROLE_CLAIM]: role } : undefined;
    },
  };
}

let keys = makeKeys();
let consoleRedirectUris = ['http://127.0.0.1/unused'];
let provider;
let issuer;
let jwksHits = 0;

function rebuild() {
  provider = new Provider(issuer, configuration(keys, consoleRedirectUris));
  provider.proxy = false;
  writeFileSync(keysFile, JSON.stringify({
    issuer,
    keys: keys.map(({ alg, kid, pem, publicJwk }) => ({ alg, kid, pem, publicJwk })),
  }));
}

async function body(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

const server = createServer(async (req, res) => {
  if (req.method === 'POST' && req.url === '/__test/rotate') {
    keys = [...makeKeys(), ...keys];
    rebuild();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kids: keys.slice(0, 3).map((k) => k.kid) }));
    return;
  }
  if (req.method === 'POST' && req.url === '/__test/redirect-uris') {
    consoleRedirectUris = JSON.parse(await body(req));
    rebuild();
    res.writeHead(204);
    res.end();
    return;
  }
  if (req.method === 'GET' && req.url === '/__test/jwks-hits') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ hits: jwksHits }));
    return;
  }
  if (req.url.startsWith('/jwks')) jwksHits += 1;
  provider.callback()(req, res);
});

// Longer than any pause of the tests between two requests on one connection.
server.keepAliveTimeout = 120_000;

server.listen(0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  rebuild();
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
