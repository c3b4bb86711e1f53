/**
 * Client input: bounded body reading and validation of chat and (legacy)
 * completion requests. Pure apart from reading the body stream.
 */
import { ApiError, badRequest } from "./errors";
import type { ChatMessage } from "./classify";

/** Reads at most `limit` bytes; 413 when the body (or its Content-Length) is larger. */
export async function readBodyCapped(request: Request, limit: number): Promise<Uint8Array> {
	const tooLarge = () =>
		new ApiError(413, "invalid_request_error", "request_too_large", `Request body is larger than ${limit} bytes.`);
	const declared = request.headers.get("content-length");
	if (declared !== null && Number(declared) > limit) throw tooLarge();
	if (!request.body) return new Uint8Array(0);
	// A declared length within the limit is what the runtime's HTTP framing
	// delivers, no more: read it whole in one call.
	if (declared !== null && /^\d+$/.test(declared)) return new Uint8Array(await request.arrayBuffer());
	const bytes = await readStreamCapped(request.body, limit);
	if (bytes === null) throw tooLarge();
	return bytes;
}

/**
 * Reads a stream chunk by chunk, at most `limit` bytes: null (and the stream
 * cancelled) as soon as it goes over, so a larger body is never held whole.
 * A read error is thrown.
 */
export async function readStreamCapped(stream: ReadableStream<Uint8Array>, limit: number): Promise<Uint8Array | null> {
	const reader = stream.getReader();
	const chunks: Uint8Array[] = [];
	let size = 0;
	for (;;) {
		const { done, value } = await reader.read();
		if (done) break;
		size += value.byteLength;
		if (size > limit) {
			await reader.cancel().catch(() => {});
			return null;
		}
		chunks.push(value);
	}
	if (chunks.length === 1) return chunks[0]!;
	const out = new Uint8Array(size);
	let at = 0;
	for (const c of chunks) {
		out.set(c, at);
		at += c.byteLength;
	}
	return out;
}

export interface ChatRequest {
	api: "chat";
	model: string;
	messages: ChatMessage[];
	stream: boolean;
	/** max_completion_tokens, else max_tokens, else null */
	maxTokens: number | null;
	/** the parsed body, for options passed on to the edge model */
	raw: Record<string, unknown>;
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

/** MAX_TOKENS_LIMIT when unset or not a positive integer. */
export const DEFAULT_MAX_TOKENS_LIMIT = 4096;

/** A /v1/completions request (OpenAI's legacy completions: one prompt string). */
export interface CompletionRequest {
	api: "completions";
	model: string;
	prompt: string;
	stream: boolean;
	/** max_tokens, else null */
	maxTokens: number | null;
	/** the parsed body, for options passed on to the edge model */
	raw: Record<string, unknown>;
}

/** What one generation endpoint asked for. */
export type GenerationRequest = ChatRequest | CompletionRequest;

/** A JSON object body with a string `model` and a boolean `stream`, or 400. */
function parseObject(body: Uint8Array): Record<string, unknown> & { model: string } {
	let raw: unknown;
	try {
		raw = JSON.parse(utf8.decode(body));
	} catch {
		throw badRequest("Request body is not valid JSON.", null, "invalid_json");
	}
	if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw badRequest("Request body must be a JSON object.");
	const obj = raw as Record<string, unknown>;
	if (typeof obj.model !== "string" || obj.model === "") throw badRequest("'model' is required and must be a string.", "model");
	if (obj.stream !== undefined && obj.stream !== null && typeof obj.stream !== "boolean") throw badRequest("'stream' must be a boolean.", "stream");
	return obj as Record<string, unknown> & { model: string };
}

/** A token-count field: null when absent, else a positive integer at most `limit` (400 naming it otherwise). */
function tokenLimit(obj: Record<string, unknown>, f: string, limit: number): number | null {
	const v = obj[f];
	if (v === undefined || v === null) return null;
	if (typeof v !== "number" || !Number.isInteger(v) || v < 1) throw badRequest(`'${f}' must be a positive integer.`, f);
	if (v > limit) throw badRequest(`'${f}' is ${v}; this endpoint allows at most ${limit}.`, f, "max_tokens_too_large");
	return v;
}

/**
 * Parses and validates a /v1/completions body (400 naming the field when
 * wrong): `prompt` is one string (backhaul-inference takes exactly one), or
 * an array holding one string; `max_tokens` at most `maxTokensLimit`.
 */
export function parseCompletionRequest(body: Uint8Array, maxTokensLimit = DEFAULT_MAX_TOKENS_LIMIT): CompletionRequest {
	const obj = parseObject(body);
	if (obj.prompt === undefined) throw badRequest("'prompt' is required.", "prompt", "missing_required_parameter");
	const p = obj.prompt;
	const prompt = typeof p === "string" ? p : Array.isArray(p) && p.length === 1 && typeof p[0] === "string" ? p[0] : null;
	if (prompt === null) throw badRequest("'prompt' must be a string (one prompt per request).", "prompt");
	return { api: "completions", model: obj.model, prompt, stream: obj.stream === true, maxTokens: tokenLimit(obj, "max_tokens", maxTokensLimit), raw: obj };
}

/**
 * Parses and validates a /v1/chat/completions body (400 naming the field
 * when wrong). `max_tokens` and `max_completion_tokens` may each be at most
 * `maxTokensLimit` (the Worker's MAX_TOKENS_LIMIT): a client cannot hold a
 * GPU for longer than the operator allows.
 */
export function parseChatRequest(body: Uint8Array, maxTokensLimit = DEFAULT_MAX_TOKENS_LIMIT): ChatRequest {
	const obj = parseObject(body);
	if (obj.messages === undefined) throw badRequest("'messages' is required.", "messages", "missing_required_parameter");
	if (!Array.isArray(obj.messages) || obj.messages.length === 0) throw badRequest("'messages' must be a non-empty array.", "messages");
	obj.messages.forEach((m, i) => {
		if (typeof m !== "object" || m === null || typeof (m as { role?: unknown }).role !== "string") {
			throw badRequest(`'messages[${i}]' must be an object with a string 'role'.`, `messages[${i}]`);
		}
		const content = (m as { content?: unknown }).content;
		if (content !== undefined && content !== null && typeof content !== "string" && !Array.isArray(content)) {
			throw badRequest(`'messages[${i}].content' must be a string or an array of content parts.`, `messages[${i}].content`);
		}
	});
	const maxCompletion = tokenLimit(obj, "max_completion_tokens", maxTokensLimit);
	const maxTokens = tokenLimit(obj, "max_tokens", maxTokensLimit);

	return {
		api: "chat",
		model: obj.model,
		messages: obj.messages as ChatMessage[],
		stream: obj.stream === true,
		maxTokens: maxCompletion ?? maxTokens,
		raw: obj,
	};
}

/**
 * The first content part that is not text (`image_url`, `input_image`,
 * `input_audio`, …), as `messages[i].content[j]` and its type; null when
 * every part is text. Neither tier takes anything else: the edge's Workers
 * AI text models get text only (edge.ts), and backhaul-inference answers 400
 * to any other part. Such a request is refused (400 naming `messages`),
 * never sent on with the part dropped.
 */
export function nonTextPart(messages: readonly ChatMessage[]): { at: string; type: string } | null {
	for (const [i, m] of messages.entries()) {
		if (!Array.isArray(m.content)) continue;
		for (const [j, part] of (m.content as unknown[]).entries()) {
			const p = part as { type?: unknown; text?: unknown } | null;
			if (typeof p === "object" && p !== null && p.type === "text" && typeof p.text === "string") continue;
			const type = typeof p === "object" && p !== null && typeof p.type === "string" ? p.type.slice(0, 64) : "unknown";
			return { at: `messages[${i}].content[${j}]`, type };
		}
	}
	return null;
}
