/**
 * Test publisher keys (test only, never deployed) and the BACKHAUL_PUBLISHERS
 * the suite's Worker runs with (vitest.config.ts). Plain data: vitest.config.ts
 * imports it in Node, the tests inside workerd.
 *
 * cluster-us-east and cluster-eu-west are the keys of
 * docs/schemas/publication-signature-vectors.json; the others are PKCS#8 of
 * the seed SHA-256("backhaul worker test key <id>").
 */
export interface TestKey {
	id: string;
	/** PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes it. */
	pkcs8Pem: string;
	/** Base64 of the raw public key, as BACKHAUL_PUBLISHERS holds it. */
	publicKey: string;
}

export const KEYS = {
	/** Any namespace, any region, any host: what the rest of the suite publishes with. */
	admin: {
		id: "test-admin",
		pkcs8Pem: "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIIsxuBfE5PAcIHCO12siWxqWxJLsQl6osFuq1AMK8B5C\n-----END PRIVATE KEY-----\n",
		publicKey: "X/jMOaT7fUqk5giQ9lktDkQAdGMP+FYfKfM6vkObsjk=",
	},
	usEast: {
		id: "cluster-us-east",
		pkcs8Pem: "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIEzNCJso/5banbbDRuwRTg9bijGfNaumJNqM9u1PuKb7\n-----END PRIVATE KEY-----\n",
		publicKey: "PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=",
	},
	/** A second cluster of the same fleet in the same region (its own key). */
	usEastB: {
		id: "us-east-b",
		pkcs8Pem: "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJiSURRxvtNs/7jser/iy9yf8fBQFJlcOb0Kh05enbVG\n-----END PRIVATE KEY-----\n",
		publicKey: "2AD4/7WRlXwiDt/ouYtfv+3gN6kFfoJ+VVYUT5WLvU0=",
	},
	euWest: {
		id: "cluster-eu-west",
		pkcs8Pem: "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIMWqjfQ/n4N77bdELzHct7Fm04U1B28JS4XOOi4LRFj3\n-----END PRIVATE KEY-----\n",
		publicKey: "/FHNjmIYoaONpH7QAjDwWAgW7RO6MwOsXeuRFUiQgCU=",
	},
	/** Another tenant's fleet: namespace team-b only. */
	tenantB: {
		id: "tenant-b",
		pkcs8Pem: "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINnNvyBq09zLuUn8mAvBqK6Xjuu8MfQRZTKmNCCCKtxJ\n-----END PRIVATE KEY-----\n",
		publicKey: "7W6nYpVoTiLDdzce1XPSE4WUfloiqytIfvLvT3VW6PE=",
	},
} as const satisfies Record<string, TestKey>;

export const TEST_PUBLISHERS = [
	{ id: KEYS.admin.id, publicKey: KEYS.admin.publicKey, group: "test", namespaces: ["*"], regions: ["*"] },
	{
		id: KEYS.usEast.id,
		publicKey: KEYS.usEast.publicKey,
		group: "prod",
		namespaces: ["ml", "search"],
		regions: ["us-east"],
		endpointHosts: ["us-east.gpu.example.com", "*.us-east.gpu.example.com"],
	},
	{ id: KEYS.usEastB.id, publicKey: KEYS.usEastB.publicKey, group: "prod", namespaces: ["ml"], regions: ["us-east"], endpointHosts: ["us-east.gpu.example.com"] },
	{ id: KEYS.euWest.id, publicKey: KEYS.euWest.publicKey, group: "prod", namespaces: ["ml"], regions: ["eu-west"], endpointHosts: ["*.eu-west.gpu.example.com"] },
	{ id: KEYS.tenantB.id, publicKey: KEYS.tenantB.publicKey, group: "tenant-b", namespaces: ["team-b"], regions: ["*"], endpointHosts: ["*.team-b.example.net"] },
];

/** A model BACKHAUL_MODEL_OWNERS gives to tenant-b, whoever publishes first. */
export const TEST_MODEL_OWNERS = { "handed-to-team-b": "tenant-b/team-b" };
