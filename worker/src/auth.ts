/**
 * Client access: API keys, what each key may do, the per-key rate limit.
 * Access fails closed: without keys nothing is served unless the operator
 * says so (ALLOW_ANONYMOUS).
 *
 * BACKHAUL_API_KEYS (secret), either
 *   - a comma-separated list of keys, `key-one,key-two` (plain keys), or
 *   - a JSON array whose entries are a key or `{"key": "...", "routeHint": true}`:
 *     `[{"key":"ops-key","routeHint":true},"app-key"]`.
 * `routeHint: true` lets that key send `x-backhaul-route` (edge | region);
 * plain keys may not (403 route_hint_forbidden). Clients send
 * `Authorization: Bearer <key>`. Keys are compared as SHA-256 digests with a
 * timing-safe comparison, every key each time. The rate limit (binding
 * KEY_RATE_LIMITER) counts per key; over it, 429 with Retry-After.
 *
 * With no key configured: 401 no_api_keys_configured, unless ALLOW_ANONYMOUS
 * is exactly "true"; then every request is served without a key and without a
 * rate limit (there is no client identity to count), and may send
 * `x-backhaul-route` only where ALLOW_ANONYMOUS_ROUTE_HINT is exactly "true".
 * When keys are configured a key is always required: ALLOW_ANONYMOUS does not
 * open a keyed Worker.
 *
 * A BACKHAUL_API_KEYS that does not parse refuses every request (500
 * api_keys_misconfigured): a typo must not open the API or drop a key's rights.
 */
import { ApiError } from "./errors";

export interface ClientKey {
	key: string;
	/** may send x-backhaul-route */
	routeHint: boolean;
}

/** Who is calling, once authenticated. */
export interface Caller {
	/** false for an anonymous caller (ALLOW_ANONYMOUS) */
	keyed: boolean;
	/** may send x-backhaul-route */
	routeHint: boolean;
	/** the first 16 hex digits of the key's SHA-256, for the access log (never the key); null when anonymous */
	keyHash: string | null;
}

export class KeyConfigError extends Error {}

/** Parses BACKHAUL_API_KEYS; throws KeyConfigError when it is malformed. */
export function parseKeys(raw: string): ClientKey[] {
	const text = raw.trim();
	// JSON-looking text is JSON: `{...}` is a mistake, not a key.
	if (!text.startsWith("[") && !text.startsWith("{")) {
		return text
			.split(",")
			.map((k) => k.trim())
			.filter((k) => k !== "")
			.map((key) => ({ key, routeHint: false }));
	}
	let parsed: unknown;
	try {
		parsed = JSON.parse(text);
	} catch {
		throw new KeyConfigError("BACKHAUL_API_KEYS looks like JSON but does not parse");
	}
	if (!Array.isArray(parsed)) throw new KeyConfigError("BACKHAUL_API_KEYS must be a JSON array");
	return parsed.map((entry, i): ClientKey => {
		if (typeof entry === "string") {
			if (entry.trim() === "") throw new KeyConfigError(`BACKHAUL_API_KEYS[${i}] is empty`);
			return { key: entry.trim(), routeHint: false };
		}
		if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
			throw new KeyConfigError(`BACKHAUL_API_KEYS[${i}] must be a string or {"key": "...", "routeHint": true|false}`);
		}
		const o = entry as Record<string, unknown>;
		for (const field of Object.keys(o)) {
			if (field !== "key" && field !== "routeHint") throw new KeyConfigError(`BACKHAUL_API_KEYS[${i}] has an unknown field '${field}'`);
		}
		if (typeof o.key !== "string" || o.key.trim() === "") throw new KeyConfigError(`BACKHAUL_API_KEYS[${i}].key must be a non-empty string`);
		if (o.routeHint !== undefined && typeof o.routeHint !== "boolean") throw new KeyConfigError(`BACKHAUL_API_KEYS[${i}].routeHint must be a boolean`);
		return { key: o.key.trim(), routeHint: o.routeHint === true };
	});
}

interface KeyTable {
	raw: string;
	keys: ClientKey[];
	digests: ArrayBuffer[];
}

/** The parsed keys and their digests, for the last BACKHAUL_API_KEYS this isolate saw. */
let cached: KeyTable | null = null;

async function keyTable(env: Env): Promise<KeyTable> {
	const raw = (env as { BACKHAUL_API_KEYS?: string }).BACKHAUL_API_KEYS ?? "";
	if (cached?.raw === raw) return cached;
	let keys: ClientKey[];
	try {
		keys = parseKeys(raw);
	} catch (err) {
		// Never the value itself: it holds the keys.
		console.error("BACKHAUL_API_KEYS is malformed; refusing every request", { error: String(err) });
		throw new ApiError(500, "server_error", "api_keys_misconfigured", "The Worker's API key configuration is invalid; the operator must fix BACKHAUL_API_KEYS.");
	}
	const digests = await Promise.all(keys.map((k) => digest(k.key)));
	cached = { raw, keys, digests };
	return cached;
}

export function bearerToken(header: string | null): string | null {
	if (!header) return null;
	const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
	return m ? m[1]! : null;
}

const digest = async (s: string) => crypto.subtle.digest("SHA-256", new TextEncoder().encode(s));

/** The index of the matching digest, or -1; every digest is compared, in constant time each. */
async function matchDigest(token: string, digests: readonly ArrayBuffer[]): Promise<number> {
	const t = await digest(token);
	let found = -1;
	for (let i = 0; i < digests.length; i++) {
		if (crypto.subtle.timingSafeEqual(t, digests[i]!) && found === -1) found = i;
	}
	return found;
}

/**
 * 401 when the request has no key or a wrong one, or when no key is
 * configured and ALLOW_ANONYMOUS is not "true"; 429 when the key is over its
 * rate limit. Returns the caller and what it may do. `seen.keyHash` is set
 * as soon as the key matched, so a request refused by the rate limit is
 * still logged with it.
 */
export async function authenticate(request: Request, env: Env, seen?: { keyHash: string | null }): Promise<Caller> {
	const table = await keyTable(env);
	if (table.keys.length === 0) {
		if (env.ALLOW_ANONYMOUS === "true") return { keyed: false, routeHint: env.ALLOW_ANONYMOUS_ROUTE_HINT === "true", keyHash: null };
		throw new ApiError(
			401,
			"authentication_error",
			"no_api_keys_configured",
			"This Worker has no API keys configured and does not allow anonymous access: set the BACKHAUL_API_KEYS secret, or the ALLOW_ANONYMOUS var to \"true\" for an open API.",
			null,
			{ "www-authenticate": 'Bearer realm="backhaul"' },
		);
	}
	const token = bearerToken(request.headers.get("authorization"));
	if (token === null) {
		throw new ApiError(401, "authentication_error", "missing_api_key", "Missing API key: send Authorization: Bearer <key>.", null, {
			"www-authenticate": 'Bearer realm="backhaul"',
		});
	}
	const index = await matchDigest(token, table.digests);
	if (index < 0) {
		throw new ApiError(401, "authentication_error", "invalid_api_key", "Incorrect API key provided.", null, {
			"www-authenticate": 'Bearer realm="backhaul", error="invalid_token"',
		});
	}
	const keyDigest = hex(table.digests[index]!);
	if (seen) seen.keyHash = keyDigest.slice(0, 16);
	const limiter = (env as { KEY_RATE_LIMITER?: RateLimit }).KEY_RATE_LIMITER;
	if (limiter) {
		// The limiter sees a digest prefix, never the key itself.
		const { success } = await limiter.limit({ key: `key:${keyDigest.slice(0, 32)}` });
		if (!success) {
			const period = Number(env.RATE_LIMIT_PERIOD_SECONDS) || 60;
			throw new ApiError(429, "rate_limit_error", "rate_limit_exceeded", `Rate limit reached for this API key; retry after ${period} s.`, null, {
				"retry-after": String(period),
			});
		}
	}
	return { keyed: true, routeHint: table.keys[index]!.routeHint, keyHash: keyDigest.slice(0, 16) };
}

/** 403 when the caller sent x-backhaul-route without the right to. */
export function checkRouteHint(caller: Pick<Caller, "keyed" | "routeHint">, hinted: boolean): void {
	if (!hinted || caller.routeHint) return;
	throw new ApiError(
		403,
		"permission_error",
		"route_hint_forbidden",
		!caller.keyed
			? "Anonymous callers may not send x-backhaul-route (set ALLOW_ANONYMOUS_ROUTE_HINT to \"true\" to allow it)."
			: "This API key may not send x-backhaul-route: give it \"routeHint\": true in BACKHAUL_API_KEYS.",
		"x-backhaul-route",
	);
}

const hex = (b: ArrayBuffer) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, "0")).join("");
