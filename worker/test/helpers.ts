import { env, SELF } from "cloudflare:test";
import { handleAdmin } from "../src/admin";
import { ApiError } from "../src/errors";
import type { Route, Routing, StoredRoute, StoredView } from "../src/route";
import { encodeBase64, signingPayload } from "../src/signature";
import { routeTable } from "../src/table";
import { KEYS, TEST_PUBLISHERS, type TestKey } from "./keys";

export const testEnv = env as Env & { TEST_UPSTREAM: string; TEST_REFUSED: string };
export { KEYS, type TestKey };

let seq = 0;
/** A unique id per call, so tests never share routes, cooldowns or upstream counters. */
export const uid = (prefix = "t") => `${prefix}${Date.now().toString(36)}${(seq++).toString(36)}`;

/** An upstream endpoint of the simulated regions (test/upstream-server.ts). */
export const upstream = (scenario: string, id: string) => `${testEnv.TEST_UPSTREAM}/${scenario}/${id}`;
export const upstreamControl = (what: string, id: string) => fetch(`${testEnv.TEST_UPSTREAM}/control/${what}/${id}`);
export const upstreamCount = async (id: string) => Number(await (await upstreamControl("count", id)).text());

/** The region credential test routes carry; test/upstream-server.ts accepts it. */
export const TEST_UPSTREAM_TOKEN = "test-upstream-token-0123456789";

let sequence = Date.now();
/** A fresh, increasing route sequence number. */
export const nextSequence = () => ++sequence;

export function makeRoute(overrides: Partial<Omit<Route, "routing">> & { routing?: Partial<Routing> } = {}): Route {
	const { routing, ...rest } = overrides;
	return {
		namespace: "default",
		name: "smollm2",
		region: "us-east",
		model: "smollm2-135m",
		endpoint: "https://us-east.gpu.example.com",
		location: { latitude: 39.04, longitude: -77.49 },
		replicas: 2,
		readyReplicas: 2,
		edgeModel: null,
		generation: 1,
		sequence: nextSequence(),
		publishedAt: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
		ttlSeconds: 60,
		upstreamToken: TEST_UPSTREAM_TOKEN,
		...rest,
		routing: {
			heavyPromptTokens: 1024,
			heavyMaxTokens: 512,
			requestTimeoutMs: 10_000,
			firstByteTimeoutMs: 1_000,
			failoverAttempts: 3,
			...routing,
		},
	};
}

const privateKeys = new Map<string, Promise<CryptoKey>>();

/** A PKCS#8 PEM Ed25519 private key, imported with WebCrypto (cached). */
export function importPrivateKey(pem: string): Promise<CryptoKey> {
	let k = privateKeys.get(pem);
	if (!k) {
		const der = Uint8Array.from(atob(pem.replace(/-----[A-Z ]+-----|\s/g, "")), (c) => c.charCodeAt(0));
		k = crypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, false, ["sign"]);
		privateKeys.set(pem, k);
	}
	return k;
}

/** The X-Backhaul-Signature value a publisher sends: `ed25519=<base64>` over docs/publication.md's bytes. */
export async function sign(key: CryptoKey | string, keyId: string, timestamp: string, method: string, path: string, body: Uint8Array): Promise<string> {
	const k = typeof key === "string" ? await importPrivateKey(key) : key;
	const sig = await crypto.subtle.sign({ name: "Ed25519" }, k, signingPayload(keyId, timestamp, method, path, body));
	return `ed25519=${encodeBase64(new Uint8Array(sig))}`;
}

export interface SignOptions {
	/** Unix seconds of X-Backhaul-Timestamp; default: the Worker's clock (`nowMs`, else now). */
	timestamp?: number;
	/** The signing key; default KEYS.admin (any namespace, region and host). */
	key?: TestKey | { id: string; privateKey: CryptoKey };
	/** Headers sent as given instead of computed (tampering tests). */
	keyId?: string;
	signature?: string;
	/** What is signed, when it should differ from what is sent. */
	signedBody?: string;
	signedPath?: string;
	signedMethod?: string;
	signedKeyId?: string;
	/** A DELETE without a body (by default a DELETE sends {"sequence": nextSequence()}). */
	emptyBody?: boolean;
	/** More request headers (not signed: If-None-Match, say). */
	headers?: Record<string, string>;
	/**
	 * Calls the admin handler directly, inside this isolate, with this env
	 * merged over the suite's (another BACKHAUL_PUBLISHERS, say) and/or the
	 * Worker's clock at `nowMs`, instead of going through SELF.
	 */
	env?: Record<string, unknown>;
	nowMs?: number;
}

/** A signed admin request (docs/publication.md), by default through the Worker's fetch handler. */
export async function signedRequest(method: string, path: string, body = "", opts: SignOptions = {}): Promise<Response> {
	if (method === "DELETE" && body === "" && !opts.emptyBody) body = JSON.stringify({ sequence: nextSequence() });
	const ts = String(opts.timestamp ?? Math.floor((opts.nowMs ?? Date.now()) / 1000));
	const key = opts.key ?? KEYS.admin;
	const privateKey = "privateKey" in key ? key.privateKey : await importPrivateKey(key.pkcs8Pem);
	const signedKeyId = opts.signedKeyId ?? key.id;
	const signature =
		opts.signature ??
		(await sign(privateKey, signedKeyId, ts, opts.signedMethod ?? method, opts.signedPath ?? path, new TextEncoder().encode(opts.signedBody ?? body)));
	const request = new Request(`https://router.test${path}`, {
		method,
		headers: {
			"x-backhaul-key-id": opts.keyId ?? key.id,
			"x-backhaul-timestamp": ts,
			"x-backhaul-signature": signature,
			"content-type": "application/json",
			...opts.headers,
		},
		body: method === "GET" ? undefined : body,
	});
	if (opts.env === undefined && opts.nowMs === undefined) return SELF.fetch(request);
	try {
		return await handleAdmin(request, { ...env, ...opts.env } as Env, new URL(request.url), opts.nowMs);
	} catch (e) {
		if (e instanceof ApiError) return e.toResponse();
		throw e;
	}
}

export const routePath = (r: Pick<Route, "namespace" | "name" | "region">) => `/admin/v1/routes/${r.namespace}/${r.name}/${r.region}`;

/**
 * PUTs a route and expects 200. A route whose publishedAt is more than 300 s
 * from now, or which says it has already expired (publishedAt more than
 * ttlSeconds ago: `justExpired()`), is published with the Worker's clock at
 * publishedAt: the Worker refuses a publishedAt that far from its clock, and
 * expiry counts from when it received the route, so the route is then as old
 * as its publishedAt says.
 */
export async function publish(route: Route, opts: SignOptions = {}): Promise<Response> {
	const claimed = Date.parse(route.publishedAt);
	const inPast = Math.abs(claimed - Date.now()) > 300_000 || Date.now() - claimed > route.ttlSeconds * 1000;
	const clock = opts.nowMs === undefined && inPast ? { nowMs: claimed } : {};
	const res = await signedRequest("PUT", routePath(route), JSON.stringify(route), { ...clock, ...opts });
	if (res.status !== 200) throw new Error(`publish failed: ${res.status} ${await res.text()}`);
	return res;
}

/**
 * Route fields of a route that expired a second ago: received 11 s ago with
 * ttlSeconds 10 (`publish` uses the Worker's clock at publishedAt). Recent,
 * so the table's alarm keeps it (expired, EXPIRED_ROUTE_RETENTION_MS) for
 * the whole test.
 */
export const justExpired = () => ({ publishedAt: new Date(Date.now() - 11_000).toISOString(), ttlSeconds: 10 });

/** The table GET's routes (stored views), as the admin key (any scope) sees them. */
export async function listRoutes(opts: SignOptions = {}): Promise<StoredView[]> {
	const res = await signedRequest("GET", "/admin/v1/routes", "", opts);
	if (res.status !== 200) throw new Error(`list failed: ${res.status} ${await res.text()}`);
	return ((await res.json()) as { routes: StoredView[] }).routes;
}

export interface RouteState {
	route: StoredView | null;
	tombstone: { sequence: number; deletedAt: string; expiresAt: string } | null;
}

/** The single-route GET. */
export async function getRoute(k: Pick<Route, "namespace" | "name" | "region">, opts: SignOptions = {}): Promise<RouteState> {
	const res = await signedRequest("GET", routePath(k), "", opts);
	if (res.status !== 200) throw new Error(`get failed: ${res.status} ${await res.text()}`);
	return (await res.json()) as RouteState;
}

/**
 * A route as the table stores it, for tests below the admin API (ranking,
 * the cache): received at `receivedAtMs` (default: its publishedAt), by the
 * admin key.
 */
export function storedRoute(route: Route, receivedAtMs = Date.parse(route.publishedAt)): StoredRoute {
	return { ...route, receivedAtMs, keyId: KEYS.admin.id, group: "test", owner: `test/${route.namespace}`, upstreamTokenSha256: "0000000000000000" };
}

/** Writes a route straight into the Durable Object, as another isolate's write would land (this isolate's copy is not refreshed). */
export async function putDirect(route: Route): Promise<void> {
	const result = await routeTable(env).put({ route: storedRoute(route, Date.now()), configuredOwner: null, maxRoutesPerKey: 1_000_000, nowMs: Date.now() });
	if (!result.ok) throw new Error(`putDirect failed: ${JSON.stringify(result)}`);
}

export function chat(body: unknown, init: RequestInit<CfProperties> & { headers?: Record<string, string> } = {}): Promise<Response> {
	return SELF.fetch("https://router.test/v1/chat/completions", {
		method: "POST",
		...init,
		headers: { "content-type": "application/json", ...(init.headers ?? {}) },
		body: typeof body === "string" ? body : JSON.stringify(body),
	});
}

/** POST /v1/completions (OpenAI's legacy completions) through the Worker. */
export function completion(body: unknown, init: RequestInit<CfProperties> & { headers?: Record<string, string> } = {}): Promise<Response> {
	return SELF.fetch("https://router.test/v1/completions", {
		method: "POST",
		...init,
		headers: { "content-type": "application/json", ...(init.headers ?? {}) },
		body: typeof body === "string" ? body : JSON.stringify(body),
	});
}

export const userMessage = (content: string) => [{ role: "user", content }];

/** The SSE `data:` payloads of a whole body. */
export function ssePayloads(text: string): string[] {
	return text
		.split("\n")
		.filter((l) => l.startsWith("data:"))
		.map((l) => l.slice(5).trim());
}

/** Concatenated delta content of an OpenAI SSE body. */
export function sseContent(text: string): string {
	return ssePayloads(text)
		.filter((p) => p !== "[DONE]")
		.map((p) => (JSON.parse(p) as { choices?: { delta?: { content?: string } }[] }).choices?.[0]?.delta?.content ?? "")
		.join("");
}

/** A key made for one test (its leases and routes are its own): its signing key and the SignOptions that use it. */
export interface FreshPublisher {
	id: string;
	group: string;
	key: { id: string; privateKey: CryptoKey };
	/** Sign with this key, under BACKHAUL_PUBLISHERS = the suite's keys plus this one (and `extraEnv`). */
	opts: SignOptions & { env: Record<string, unknown> };
}

/**
 * New Ed25519 publisher keys, each with a scope, added to the suite's
 * BACKHAUL_PUBLISHERS for the requests that pass their `opts` (the admin
 * handler runs in this isolate with that env).
 */
export async function freshPublishers(
	entries: { prefix: string; group?: string; namespaces?: string[]; regions?: string[] }[],
	extraEnv: Record<string, unknown> = {},
): Promise<FreshPublisher[]> {
	const made = await Promise.all(
		entries.map(async (e) => {
			const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"])) as CryptoKeyPair;
			const raw = new Uint8Array((await crypto.subtle.exportKey("raw", pair.publicKey)) as ArrayBuffer);
			const id = uid(e.prefix);
			const group = e.group ?? id;
			return { id, group, privateKey: pair.privateKey, entry: { id, publicKey: encodeBase64(raw), group, namespaces: e.namespaces ?? ["*"], regions: e.regions ?? ["*"] } };
		}),
	);
	const env = { BACKHAUL_PUBLISHERS: JSON.stringify([...TEST_PUBLISHERS, ...made.map((m) => m.entry)]), ...extraEnv };
	return made.map((m) => ({ id: m.id, group: m.group, key: { id: m.id, privateKey: m.privateKey }, opts: { key: { id: m.id, privateKey: m.privateKey }, env } }));
}

export const leasePath = (keyId: string) => `/admin/v1/leases/${keyId}`;

export interface LeaseAnswer {
	lease: { keyId: string; sequence: number; renewedAt: string; routes: number; digest: string };
}

/** PUT /admin/v1/leases/{keyId} with `body` as JSON (or as given, when a string). */
export const renewLease = (keyId: string, body: unknown, opts: SignOptions = {}) =>
	signedRequest("PUT", leasePath(keyId), typeof body === "string" ? body : JSON.stringify(body), opts);
