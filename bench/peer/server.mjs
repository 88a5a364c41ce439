// node-oidc-provider configured as the peer for the Tessera issuer benchmark.
//
// Usage: node server.mjs <config.json>
//
// config.json (written by bench/issuer.py):
//   {
//     "port": 9100,
//     "resource": "https://api.bench.example",        (optional)
//     "basic": {"client_id": "...", "client_secret": "..."},
//     "pkjwt": {"client_id": "...", "jwk": {<public EC P-256 JWK, kid, alg ES256>}}
//   }
// PEER_PORT (env) or config.port picks the port; the server binds 127.0.0.1 only.
//
// The configuration matches what the benchmark asks of Tessera: the
// client_credentials grant, client_secret_basic and private_key_jwt client
// authentication, and ES256-signed JWT access tokens (typ at+jwt) for a default
// resource, so a token request without a `resource` parameter gets a JWT.
// Storage is the provider's default in-memory adapter.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const configPath = process.argv[2] ?? process.env.PEER_CONFIG;
if (!configPath) {
  console.error('usage: node server.mjs <config.json>');
  process.exit(2);
}
const cfg = JSON.parse(readFileSync(configPath, 'utf8'));
const port = Number(process.env.PEER_PORT ?? cfg.port);
if (!Number.isInteger(port) || port <= 0) {
  console.error('no valid port in PEER_PORT or config.port');
  process.exit(2);
}
const host = '127.0.0.1';
const issuer = `http://${host}:${port}`;
const resource = cfg.resource ?? 'https://api.bench.example';

// ES256 signing key for the access tokens, made fresh at every start.
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: randomUUID(),
  alg: 'ES256',
  use: 'sig',
};

const clients = [
  {
    client_id: cfg.basic.client_id,
    client_secret: cfg.basic.client_secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'read',
  },
  {
    client_id: cfg.pkjwt.client_id,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    jwks: { keys: [cfg.pkjwt.jwk] },
    scope: 'read',
  },
];

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingJwk] },
  scopes: ['openid', 'offline_access', 'read'],
  clientDefaults: {
    grant_types: ['client_credentials'],
    response_types: [],
    id_token_signed_response_alg: 'ES256',
  },
  cookies: { keys: [randomUUID()] },
  ttl: { ClientCredentials: 600 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Requests without a `resource` parameter get this resource server...
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? resource,
      // ...whose tokens are ES256-signed JWTs (opaque is the default format).
      getResourceServerInfo: async () => ({
        scope: 'read',
        audience: resource,
        accessTokenFormat: 'jwt',
        accessTokenTTL: 600,
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});

const server = createServer(provider.callback());
server.keepAliveTimeout = 65_000;
server.listen(port, host, () => {
  console.log(`oidc-provider listening on ${issuer}`);
});

function shutdown() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
