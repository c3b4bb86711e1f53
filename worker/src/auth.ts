/**
 * Optional client API keys and the per-key rate limit.
 *
 * BACKHAUL_API_KEYS (secret): comma-separated keys; unset or empty leaves the
 * public API open. Clients send `Authorization: Bearer <key>`. Keys are
 * compared as SHA-256 digests with a timing-safe comparison. The rate limit
 * (binding KEY_RATE_LIMITER) counts per key; over it, 429 with Retry-After.
 * Without keys there is no client identity and no rate limit.
 */
import { ApiError } from "./errors";

export function configuredKeys(env: Env): string[] {
	const raw = (env as { BACKHAUL_API_KEYS?: string }).BACKHAUL_API_KEYS ?? "";
	return raw
		.split(",")
		.map((k) => k.trim())
		.filter((k) => k !== "");
}

export function bearerToken(header: string | null): string | null {
	if (!header) return null;
	const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
	return m ? m[1]! : null;
}

const digest = async (s: string) => crypto.subtle.digest("SHA-256", new TextEncoder().encode(s));

/** The index of the matching key, or -1; every key is compared, in constant time each. */
export async function matchKey(token: string, keys: readonly string[]): Promise<number> {
	const t = await digest(token);
	let found = -1;
	for (let i = 0; i < keys.length; i++) {
		if (crypto.subtle.timingSafeEqual(t, await digest(keys[i]!)) && found === -1) found = i;
	}
	return found;
}

/** 401 when keys are configured and the request has none or a wrong one; 429 when that key is over its rate limit. */
export async function authenticate(request: Request, env: Env): Promise<void> {
	const keys = configuredKeys(env);
	if (keys.length === 0) return;
	const token = bearerToken(request.headers.get("authorization"));
	if (token === null) {
		throw new ApiError(401, "authentication_error", "missing_api_key", "Missing API key: send Authorization: Bearer <key>.", null, {
			"www-authenticate": 'Bearer realm="backhaul"',
		});
	}
	const index = await matchKey(token, keys);
	if (index < 0) {
		throw new ApiError(401, "authentication_error", "invalid_api_key", "Incorrect API key provided.", null, {
			"www-authenticate": 'Bearer realm="backhaul", error="invalid_token"',
		});
	}
	const limiter = (env as { KEY_RATE_LIMITER?: RateLimit }).KEY_RATE_LIMITER;
	if (!limiter) return;
	// The limiter sees a digest prefix, never the key itself.
	const { success } = await limiter.limit({ key: `key:${hex(await digest(keys[index]!)).slice(0, 32)}` });
	if (!success) {
		const period = Number(env.RATE_LIMIT_PERIOD_SECONDS) || 60;
		throw new ApiError(429, "rate_limit_error", "rate_limit_exceeded", `Rate limit reached for this API key; retry after ${period} s.`, null, {
			"retry-after": String(period),
		});
	}
}

const hex = (b: ArrayBuffer) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, "0")).join("");
