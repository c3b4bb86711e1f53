/**
 * Whether a generation may use the response cache, and for how long (issue
 * 18). Pure.
 *
 * A request is cacheable when its answer is reproducible: `temperature` 0
 * (greedy), or the client opts in by sending `x-backhaul-cache-ttl: <seconds>`.
 * Its TTL is that header, else the model's `ttlSeconds` in CACHE_MODELS, else
 * CACHE_TTL_SECONDS (default 0: off). A TTL of 0 means not cached.
 * `x-backhaul-skip-cache: true` bypasses the cache (neither read nor written,
 * nor coalesced). Requests asking for more than one choice, or for logprobs,
 * are never cached: the stored answer holds one choice's text.
 *
 * CACHE_MODELS is a Worker var, a JSON object model → {"ttlSeconds", "shared"}:
 * the published route (docs/publication.md, a Rust type) is left as it is.
 * `shared: true` keys the model's answers without the client's key, so every
 * client shares them; otherwise each API key has its own entries.
 */
import { badRequest } from "./errors";

/** The longest TTL anything may ask for: one day. */
export const MAX_CACHE_TTL_SECONDS = 86_400;

export interface ModelCacheConfig {
	ttlSeconds: number;
	shared: boolean;
}

export type CacheModels = ReadonlyMap<string, ModelCacheConfig>;

export type CacheDecision =
	/** not reproducible, or no TTL: the cache is not involved */
	| { kind: "none" }
	/** the client said skip */
	| { kind: "bypass" }
	| { kind: "cache"; ttlSeconds: number; shared: boolean };

const isTtl = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 0;

/**
 * CACHE_MODELS parsed. A value that does not parse, or an entry that is not
 * `{"ttlSeconds": n, "shared"?: bool}` (an unknown field too), is logged and
 * ignored as a whole: an empty map, so nothing is shared by mistake.
 */
export function parseCacheModels(raw: string | undefined): CacheModels {
	const out = new Map<string, ModelCacheConfig>();
	if (raw === undefined || raw.trim() === "") return out;
	try {
		const obj = JSON.parse(raw) as unknown;
		if (typeof obj !== "object" || obj === null || Array.isArray(obj)) throw new Error("not a JSON object");
		for (const [model, v] of Object.entries(obj as Record<string, unknown>)) {
			const e = v as Record<string, unknown> | null;
			if (typeof e !== "object" || e === null || Array.isArray(e)) throw new Error(`${model}: not an object`);
			const extra = Object.keys(e).filter((k) => k !== "ttlSeconds" && k !== "shared");
			if (extra.length > 0) throw new Error(`${model}: unknown field ${extra[0]}`);
			if (!isTtl(e.ttlSeconds)) throw new Error(`${model}: ttlSeconds must be a non-negative integer`);
			if (e.shared !== undefined && typeof e.shared !== "boolean") throw new Error(`${model}: shared must be a boolean`);
			out.set(model, { ttlSeconds: Math.min(e.ttlSeconds, MAX_CACHE_TTL_SECONDS), shared: e.shared === true });
		}
		return out;
	} catch (err) {
		console.warn("CACHE_MODELS is invalid and ignored", { error: String(err) });
		return new Map();
	}
}

/** The x-backhaul-cache-ttl header: null when absent; seconds (capped) when a non-negative integer; 400 otherwise. */
export function parseTtlHeader(value: string | null): number | null {
	if (value === null) return null;
	if (!/^\d{1,10}$/.test(value.trim())) throw badRequest("x-backhaul-cache-ttl must be a whole number of seconds.", "x-backhaul-cache-ttl");
	return Math.min(Number(value.trim()), MAX_CACHE_TTL_SECONDS);
}

export function cacheDecision(input: {
	/** the request's parsed body */
	raw: Record<string, unknown>;
	model: string;
	skipHeader: string | null;
	ttlHeader: number | null;
	models: CacheModels;
	defaultTtlSeconds: number;
}): CacheDecision {
	if (input.skipHeader?.trim().toLowerCase() === "true") return { kind: "bypass" };
	const { raw } = input;
	const reproducible = raw.temperature === 0 || input.ttlHeader !== null;
	if (!reproducible) return { kind: "none" };
	// One choice's text is what is stored: more choices, or logprobs, cannot be replayed.
	if ((raw.n !== undefined && raw.n !== null && raw.n !== 1) || (raw.logprobs !== undefined && raw.logprobs !== null && raw.logprobs !== false)) return { kind: "none" };
	const model = input.models.get(input.model);
	const ttlSeconds = input.ttlHeader ?? model?.ttlSeconds ?? input.defaultTtlSeconds;
	if (ttlSeconds <= 0) return { kind: "none" };
	return { kind: "cache", ttlSeconds: Math.min(ttlSeconds, MAX_CACHE_TTL_SECONDS), shared: model?.shared === true };
}
