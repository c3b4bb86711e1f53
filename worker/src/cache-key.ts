/**
 * The response cache's key (issue 18): SHA-256 of a canonical JSON of what
 * decides a generation's answer. Pure apart from the digest (WebCrypto).
 *
 * In the key: the endpoint (chat or legacy completions), the model, the
 * normalized messages (or prompt), every other body field (sampling
 * parameters and anything the Worker does not know: an unknown field keeps
 * two requests apart rather than merging them), and the scope: the client's
 * key hash, or "shared" where CACHE_MODELS marks the model's cache shared.
 * Not in it: `stream` and `stream_options` (a stored answer is replayed either
 * way, cached-answer.ts), `user` / `safety_identifier` / `metadata` / `store`
 * (labels that do not change the tokens), and OpenAI's own prompt-cache hints
 * `prompt_cache_key` / `prompt_cache_retention` / `prompt_cache_options`
 * (clients set the key per user or per conversation; neither tier reads them,
 * docs/openai-compatibility.md). `max_completion_tokens` and `max_tokens` are one field
 * (the first, else the second, as request.ts reads them).
 */
import type { GenerationRequest } from "./request";

/** Body fields that never change the answer's tokens, or that the key holds in normalized form. */
const NOT_IN_KEY = new Set([
	"stream",
	"stream_options",
	"user",
	"safety_identifier",
	"metadata",
	"store",
	"prompt_cache_key",
	"prompt_cache_retention",
	"prompt_cache_options",
	"model",
	"messages",
	"prompt",
	"max_tokens",
	"max_completion_tokens",
]);

/**
 * JSON with object keys sorted and null-valued fields dropped (OpenAI reads
 * `"stop": null` as no stop), so equal requests give equal bytes whatever
 * order their fields came in.
 */
export function canonicalJson(value: unknown): string {
	if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
	if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? "null" : canonicalJson(v))).join(",")}]`;
	const obj = value as Record<string, unknown>;
	const fields = Object.keys(obj)
		.filter((k) => obj[k] !== null && obj[k] !== undefined)
		.sort()
		.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`);
	return `{${fields.join(",")}}`;
}

/**
 * A content array of one text part is the same message as that text. Longer
 * arrays stay as they are: how parts are joined is the model template's
 * business, so they are not merged into a string here.
 */
function normalizeMessage(m: unknown): unknown {
	if (typeof m !== "object" || m === null) return m;
	const msg = m as Record<string, unknown>;
	const c = msg.content;
	if (!Array.isArray(c) || c.length !== 1) return msg;
	const part = c[0] as { type?: unknown; text?: unknown } | null;
	if (typeof part !== "object" || part === null || part.type !== "text" || typeof part.text !== "string") return msg;
	return { ...msg, content: part.text };
}

/** The canonical text hashed into the key. `scope`: the client's key hash, "anonymous", or "shared". */
export function cacheKeyMaterial(req: GenerationRequest, scope: string): string {
	const params: Record<string, unknown> = {};
	for (const [k, v] of Object.entries(req.raw)) if (!NOT_IN_KEY.has(k)) params[k] = v;
	return canonicalJson({
		v: 1,
		api: req.api,
		model: req.model,
		input: req.api === "chat" ? req.messages.map(normalizeMessage) : req.prompt,
		max_tokens: req.maxTokens,
		params,
		scope,
	});
}

/** SHA-256 of the material, lower-case hex. */
export async function cacheKey(req: GenerationRequest, scope: string): Promise<string> {
	const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(cacheKeyMaterial(req, scope)));
	return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
