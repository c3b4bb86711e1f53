/**
 * Light requests on Workers AI, answered in OpenAI's shapes: chat requests
 * as `chat.completion` (chunks), legacy completions as `text_completion`.
 * `run` throwing (binding absent, model error, capacity) makes the caller
 * fall back to a region; a failure after the stream began ends it with an
 * error event.
 */
import { contentChars, type ChatMessage } from "./classify";
import { sseErrorEvent } from "./errors";
import type { ChatRequest, GenerationRequest } from "./request";

/** The part of the AI binding this Worker uses. */
export interface AiRunner {
	run(model: string, inputs: Record<string, unknown>, options?: Record<string, unknown>): Promise<unknown>;
}

const PASSED_OPTIONS = ["temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty", "repetition_penalty"];

const absent = (v: unknown) => v === undefined || v === null;

/**
 * Fields the edge does not pass to Workers AI but a region acts on (honours,
 * or refuses with 400 naming the field), each with when its value matters.
 * A request that sets one is never answered at the edge: there the field
 * would be dropped in silence (tools ignored, JSON mode answered as free
 * text, a stop sequence run past). Workers AI does take `tools` and
 * `response_format` for some models, but in its own shapes (flat tool
 * definitions, `tool_calls` as `[{name, arguments}]`, a bare schema in
 * `json_schema`) and only on the models that list them; the edge model is
 * whatever a route names, so the Worker does not translate them.
 * Fields neither tier acts on (docs/openai-compatibility.md) do not move a
 * request: the answer would be the same either way.
 */
const REGION_FIELDS: Record<GenerationRequest["api"], Record<string, (v: unknown) => boolean>> = {
	chat: {
		tools: (v) => !absent(v) && !(Array.isArray(v) && v.length === 0),
		tool_choice: (v) => !absent(v) && v !== "none" && v !== "auto",
		response_format: (v) => !absent(v) && (v as { type?: unknown }).type !== "text",
		stop: (v) => !absent(v) && !(Array.isArray(v) && v.length === 0),
		min_p: (v) => !absent(v),
		n: (v) => !absent(v) && v !== 1,
		logprobs: (v) => !absent(v) && v !== false,
		top_logprobs: (v) => !absent(v),
		// A region refuses these with a 400 naming the field (never drops
		// them); so must a request the edge would have answered.
		logit_bias: (v) => !absent(v) && !isEmptyObject(v),
		functions: (v) => !absent(v) && !(Array.isArray(v) && v.length === 0),
		function_call: (v) => !absent(v) && v !== "none",
		audio: (v) => !absent(v),
		modalities: (v) => !absent(v) && !(Array.isArray(v) && v.length === 1 && v[0] === "text"),
		prediction: (v) => !absent(v),
		web_search_options: (v) => !absent(v),
		reasoning_effort: (v) => !absent(v),
		verbosity: (v) => !absent(v),
	},
	completions: {
		stop: (v) => !absent(v) && !(Array.isArray(v) && v.length === 0),
		min_p: (v) => !absent(v),
		n: (v) => !absent(v) && v !== 1,
		echo: (v) => !absent(v) && v !== false,
		suffix: (v) => !absent(v),
		logit_bias: (v) => !absent(v) && !isEmptyObject(v),
		best_of: (v) => !absent(v) && v !== 1,
		logprobs: (v) => !absent(v) && v !== 0 && v !== false,
	},
};

const isEmptyObject = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v) && Object.keys(v).length === 0;

/**
 * The first field of `req` the edge cannot honour (see REGION_FIELDS), or
 * `messages` when the conversation carries tool calls or tool results (the
 * edge passes each message's role and text only); null when the edge can
 * answer the request as a region would.
 */
export function edgeUnsupportedField(req: GenerationRequest): string | null {
	for (const [field, matters] of Object.entries(REGION_FIELDS[req.api])) if (matters(req.raw[field])) return field;
	if (req.api === "chat" && req.messages.some(carriesTools)) return "messages";
	return null;
}

function carriesTools(m: ChatMessage): boolean {
	if (m.role === "tool" || m.role === "function") return true;
	const toolCalls = m.tool_calls;
	return (!absent(toolCalls) && !(Array.isArray(toolCalls) && toolCalls.length === 0)) || !absent(m.function_call);
}

/**
 * Workers AI text-generation input from an OpenAI request: text-only messages
 * (the caller has refused any other content part: request.ts's nonTextPart),
 * or a completion's prompt as it is (`raw`: no chat template), and the
 * numeric options.
 */
export function edgeInputs(req: GenerationRequest): Record<string, unknown> {
	const inputs: Record<string, unknown> =
		req.api === "completions" ? { prompt: req.prompt, raw: true, stream: req.stream } : { messages: chatMessages(req), stream: req.stream };
	if (req.maxTokens !== null) inputs.max_tokens = req.maxTokens;
	for (const k of PASSED_OPTIONS) if (typeof req.raw[k] === "number") inputs[k] = req.raw[k];
	return inputs;
}

function chatMessages(req: ChatRequest) {
	return req.messages.map((m: ChatMessage) => ({
		role: m.role,
		content: typeof m.content === "string" ? m.content : textOf(m.content),
	}));
}

function textOf(content: unknown): string {
	if (!Array.isArray(content) || contentChars(content) === 0) return "";
	return content
		.map((p) => (typeof p === "object" && p !== null && typeof (p as { text?: unknown }).text === "string" ? (p as { text: string }).text : ""))
		.join("");
}

const completionId = (api: GenerationRequest["api"] = "chat") => `${api === "chat" ? "chatcmpl" : "cmpl"}-${crypto.randomUUID().replaceAll("-", "")}`;

/** The text of a non-streaming Workers AI result (`{response}`, or OpenAI-style choices). */
function resultText(result: unknown): string {
	const r = (result ?? {}) as { response?: unknown; choices?: unknown };
	if (typeof r.response === "string") return r.response;
	if (r.response !== undefined && r.response !== null) return JSON.stringify(r.response);
	if (Array.isArray(r.choices)) {
		const c = r.choices[0] as { message?: { content?: unknown }; text?: unknown } | undefined;
		return String(c?.message?.content ?? c?.text ?? "");
	}
	return "";
}

/** A non-streaming Workers AI result (`{response, usage}`) as an OpenAI chat.completion. */
export function toChatCompletion(result: unknown, model: string, nowSeconds: number): Record<string, unknown> {
	const r = (result ?? {}) as { usage?: unknown };
	const content = resultText(result);
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

/** A non-streaming Workers AI result as an OpenAI (legacy) text_completion. */
export function toTextCompletion(result: unknown, model: string, nowSeconds: number): Record<string, unknown> {
	const r = (result ?? {}) as { usage?: unknown };
	return {
		id: completionId("completions"),
		object: "text_completion",
		created: nowSeconds,
		model,
		choices: [{ index: 0, text: resultText(result), logprobs: null, finish_reason: "stop" }],
		...(r.usage ? { usage: r.usage } : {}),
	};
}

/**
 * Converts a Workers AI SSE stream into OpenAI chat.completion.chunk events
 * (`api` "completions": text_completion events), chunk by chunk (nothing is
 * held back beyond an incomplete line).
 */
export function toOpenAiStream(
	source: ReadableStream<Uint8Array>,
	model: string,
	nowSeconds: number,
	api: GenerationRequest["api"] = "chat",
): ReadableStream<Uint8Array> {
	const id = completionId(api);
	const enc = new TextEncoder();
	const dec = new TextDecoder();
	const chunk = (delta: { role?: string; content?: string }, finish: string | null, usage?: unknown) =>
		enc.encode(
			`data: ${JSON.stringify({
				id,
				object: api === "chat" ? "chat.completion.chunk" : "text_completion",
				created: nowSeconds,
				model,
				choices: [api === "chat" ? { index: 0, delta, finish_reason: finish } : { index: 0, text: delta.content ?? "", logprobs: null, finish_reason: finish }],
				...(usage ? { usage } : {}),
			})}\n\n`,
		);
	const reader = source.getReader();
	let buffered = "";
	let finished = false;
	let usage: unknown;

	return new ReadableStream<Uint8Array>({
		start(controller) {
			// A chat stream opens with the assistant's role; a completion has none.
			if (api === "chat") controller.enqueue(chunk({ role: "assistant", content: "" }, null));
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
