/**
 * Client input: bounded body reading and chat request validation. Pure apart
 * from reading the body stream.
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
	const reader = request.body.getReader();
	const chunks: Uint8Array[] = [];
	let size = 0;
	for (;;) {
		const { done, value } = await reader.read();
		if (done) break;
		size += value.byteLength;
		if (size > limit) {
			await reader.cancel();
			throw tooLarge();
		}
		chunks.push(value);
	}
	const out = new Uint8Array(size);
	let at = 0;
	for (const c of chunks) {
		out.set(c, at);
		at += c.byteLength;
	}
	return out;
}

export interface ChatRequest {
	model: string;
	messages: ChatMessage[];
	stream: boolean;
	/** max_completion_tokens, else max_tokens, else null */
	maxTokens: number | null;
	/** the parsed body, for options passed on to the edge model */
	raw: Record<string, unknown>;
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

/** Parses and validates a /v1/chat/completions body (400 naming the field when wrong). */
export function parseChatRequest(body: Uint8Array): ChatRequest {
	let raw: unknown;
	try {
		raw = JSON.parse(utf8.decode(body));
	} catch {
		throw badRequest("Request body is not valid JSON.", null, "invalid_json");
	}
	if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw badRequest("Request body must be a JSON object.");
	const obj = raw as Record<string, unknown>;

	if (typeof obj.model !== "string" || obj.model === "") throw badRequest("'model' is required and must be a string.", "model");
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
	if (obj.stream !== undefined && obj.stream !== null && typeof obj.stream !== "boolean") throw badRequest("'stream' must be a boolean.", "stream");

	const positiveInt = (f: string): number | null => {
		const v = obj[f];
		if (v === undefined || v === null) return null;
		if (typeof v !== "number" || !Number.isInteger(v) || v < 1) throw badRequest(`'${f}' must be a positive integer.`, f);
		return v;
	};
	const maxCompletion = positiveInt("max_completion_tokens");
	const maxTokens = positiveInt("max_tokens");

	return {
		model: obj.model,
		messages: obj.messages as ChatMessage[],
		stream: obj.stream === true,
		maxTokens: maxCompletion ?? maxTokens,
		raw: obj,
	};
}
