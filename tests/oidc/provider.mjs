// A real OpenID Provider for tests: panva's oidc-provider (OpenID Certified), with its
// development login and consent pages. Usage:
//   node provider.mjs <port> '<clients JSON>' '<accounts JSON>'
// accounts: {"<login>": {"email": ..., "groups": [...]}}; any password signs a known login in.
import Provider from 'oidc-provider';

const [port, clientsJson, accountsJson] = process.argv.slice(2);
const accounts = JSON.parse(accountsJson);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: JSON.parse(clientsJson),
  claims: { openid: ['sub'], email: ['email'], profile: ['name'], groups: ['groups'] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  pkce: { required: () => true },
  conformIdTokenClaims: false, // the ID token carries the granted claims (groups)
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return { accountId: id, async claims() { return { sub: id, name: id, ...account }; } };
  },
});
provider.proxy = false;
provider.listen(Number(port), '127.0.0.1', () => console.log(`oidc provider ready at ${issuer}`));
