/**
 * Light requests on Workers AI, answered in OpenAI's shapes. `run` throwing
 * (binding absent, model error, capacity) makes the caller fall back to a
 * region; a failure after the stream began ends it with an error event.
 */
import { contentChars, type ChatMessage } from "./classify";
import { sseErrorEvent } from "./errors";
import type { ChatRequest } from "./request";

/** The part of the AI binding this Worker uses. */
export interface AiRunner {
	run(model: string, inputs: Record<string, unknown>, options?: Record<string, unknown>): Promise<unknown>;
}

const PASSED_OPTIONS = ["temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty", "repetition_penalty"];

/** Workers AI text-generation input from an OpenAI request: text-only messages, numeric options. */
export function edgeInputs(req: ChatRequest): Record<string, unknown> {
	const messages = req.messages.map((m: ChatMessage) => ({
		role: m.role,
		content: typeof m.content === "string" ? m.content : textOf(m.content),
	}));
	const inputs: Record<string, unknown> = { messages, stream: req.stream };
	if (req.maxTokens !== null) inputs.max_tokens = req.maxTokens;
	for (const k of PASSED_OPTIONS) if (typeof req.raw[k] === "number") inputs[k] = req.raw[k];
	return inputs;
}

function textOf(content: unknown): string {
	if (!Array.isArray(content) || contentChars(content) === 0) return "";
	return content
		.map((p) => (typeof p === "object" && p !== null && typeof (p as { text?: unknown }).text === "string" ? (p as { text: string }).text : ""))
		.join("");
}

const completionId = () => `chatcmpl-${crypto.randomUUID().replaceAll("-", "")}`;

/** A non-streaming Workers AI result (`{response, usage}`) as an OpenAI chat.completion. */
export function toChatCompletion(result: unknown, model: string, nowSeconds: number): Record<string, unknown> {
	const r = (result ?? {}) as { response?: unknown; usage?: unknown; choices?: unknown };
	let content = "";
	if (typeof r.response === "string") content = r.response;
	else if (r.response !== undefined && r.response !== null) content = JSON.stringify(r.response);
	else if (Array.isArray(r.choices)) content = String((r.choices[0] as { message?: { content?: unknown } })?.message?.content ?? "");
	return {
		id: completionId(),
		object: "chat.completion",
		created: nowSeconds,
		model,
		choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
		...(r.usage ? { usage: r.usage } : {}),
	};
}

/** The text delta in one Workers AI stream event (`{"response":"..."}` or OpenAI-style). */
export function eventText(payload: unknown): string {
	const p = payload as { response?: unknown; choices?: { delta?: { content?: unknown } }[] };
	if (typeof p?.response === "string") return p.response;
	const c = p?.choices?.[0]?.delta?.content;
	return typeof c === "string" ? c : "";
}

/**
 * Converts a Workers AI SSE stream into OpenAI chat.completion.chunk events,
 * chunk by chunk (nothing is held back beyond an incomplete line).
 */
export function toOpenAiStream(source: ReadableStream<Uint8Array>, model: string, nowSeconds: number): ReadableStream<Uint8Array> {
	const id = completionId();
	const enc = new TextEncoder();
	const dec = new TextDecoder();
	const chunk = (delta: Record<string, unknown>, finish: string | null, usage?: unknown) =>
		enc.encode(
			`data: ${JSON.stringify({
				id,
				object: "chat.completion.chunk",
				created: nowSeconds,
				model,
				choices: [{ index: 0, delta, finish_reason: finish }],
				...(usage ? { usage } : {}),
			})}\n\n`,
		);
	const reader = source.getReader();
	let buffered = "";
	let finished = false;
	let usage: unknown;

	return new ReadableStream<Uint8Array>({
		start(controller) {
			controller.enqueue(chunk({ role: "assistant", content: "" }, null));
		},
		async pull(controller) {
			try {
				const { done, value } = await reader.read();
				if (done) {
					if (!finished) {
						controller.enqueue(enc.encode(sseErrorEvent("Workers AI ended the stream early.", "edge_stream_truncated")));
					}
					controller.close();
					return;
				}
				buffered += dec.decode(value, { stream: true });
				const lines = buffered.split("\n");
				buffered = lines.pop() ?? "";
				for (const raw of lines) {
					const line = raw.trim();
					if (!line.startsWith("data:") || finished) continue;
					const data = line.slice(5).trim();
					if (data === "[DONE]") {
						finished = true;
						controller.enqueue(chunk({}, "stop", usage));
						controller.enqueue(enc.encode("data: [DONE]\n\n"));
						continue;
					}
					let payload: unknown;
					try {
						payload = JSON.parse(data);
					} catch {
						continue;
					}
					const u = (payload as { usage?: unknown }).usage;
					if (u) usage = u;
					const text = eventText(payload);
					if (text) controller.enqueue(chunk({ content: text }, null));
				}
			} catch (err) {
				controller.enqueue(enc.encode(sseErrorEvent(`Workers AI stream failed: ${String(err)}`, "edge_stream_failed")));
				controller.close();
			}
		},
		cancel(reason) {
			return reader.cancel(reason);
		},
	});
}

/**
 * Waits for a stream's first chunk and returns a stream that replays it: a
 * Workers AI stream that fails before producing anything throws here, while
 * the request can still go to a region.
 */
export async function withFirstChunk(source: ReadableStream<Uint8Array>): Promise<ReadableStream<Uint8Array>> {
	const reader = source.getReader();
	const first = await reader.read();
	if (first.done) throw new Error("Workers AI returned an empty stream");
	let pending: Uint8Array | null = first.value;
	return new ReadableStream<Uint8Array>({
		async pull(controller) {
			if (pending) {
				controller.enqueue(pending);
				pending = null;
				return;
			}
			try {
				const { done, value } = await reader.read();
				if (done) controller.close();
				else controller.enqueue(value);
			} catch (err) {
				controller.error(err);
			}
		},
		cancel(reason) {
			return reader.cancel(reason);
		},
	});
}
