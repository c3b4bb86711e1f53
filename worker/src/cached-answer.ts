/**
 * What the response cache stores, how it is captured from an answer, and
 * how it is replayed (issue 18). Pure.
 *
 * One choice's complete answer: its text, finish_reason, usage, model, id
 * and created. That is enough to answer a later request either way: a
 * non-streamed `chat.completion` / `text_completion`, or a stream with the
 * same chunk shapes as a live one (chat: a role chunk, a content chunk, a
 * finish chunk; completions: a text chunk and a finish chunk; then a usage
 * chunk when `stream_options.include_usage` asks and the usage is known;
 * then `data: [DONE]`). So `stream` is not part of the key: a streamed answer
 * is replayed non-streamed and the other way round. A stream is captured
 * only when it ended with `data: [DONE]` and carried no error event
 * (SseWatcher, sse.ts), a non-streamed answer only when it is one choice of
 * plain text; tool calls, several choices or anything else are not stored.
 */
import { usageOf, type Usage } from "./access-log";
import { SseWatcher } from "./sse";

export type Api = "chat" | "completions";

export interface CachedAnswer {
	v: 1;
	api: Api;
	id: string;
	model: string;
	created: number;
	text: string;
	finishReason: string;
	usage: Usage | null;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);
const str = (v: unknown, fallback: string) => (typeof v === "string" ? v : fallback);
const num = (v: unknown, fallback: number) => (typeof v === "number" && Number.isFinite(v) ? v : fallback);

/** A non-streamed completion's answer, or null when it is not one choice of plain text. */
export function fromCompletion(api: Api, body: unknown, fallbackModel: string, nowSeconds: number): CachedAnswer | null {
	if (!isObj(body) || !Array.isArray(body.choices) || body.choices.length !== 1) return null;
	const choice = body.choices[0];
	if (!isObj(choice) || (choice.index !== undefined && choice.index !== 0)) return null;
	let text: unknown;
	if (api === "chat") {
		const m = choice.message;
		if (!isObj(m) || (m.tool_calls !== undefined && m.tool_calls !== null) || (m.function_call !== undefined && m.function_call !== null)) return null;
		text = m.content;
	} else {
		if (choice.logprobs !== undefined && choice.logprobs !== null) return null;
		text = choice.text;
	}
	if (typeof text !== "string") return null;
	return {
		v: 1,
		api,
		id: str(body.id, ""),
		model: str(body.model, fallbackModel),
		created: num(body.created, nowSeconds),
		text,
		finishReason: str(choice.finish_reason, "stop"),
		usage: usageOf(body),
	};
}

/**
 * Collects a streamed answer from the SSE bytes as they pass. `answer()`
 * gives it once the stream has ended, or null when it cannot be stored: no
 * `data: [DONE]`, an error event, an event that is not JSON, a second
 * choice, a tool call.
 */
export class StreamCollector {
	private readonly watcher = new SseWatcher();
	private readonly decoder = new TextDecoder();
	private pending = "";
	private text = "";
	private id = "";
	private model = "";
	private created: number | null = null;
	private finishReason: string | null = null;
	private usage: Usage | null = null;
	private unusable = false;

	constructor(
		private readonly api: Api,
		private readonly fallbackModel: string,
	) {}

	push(bytes: Uint8Array): void {
		this.watcher.push(bytes);
		if (this.unusable) return;
		this.pending += this.decoder.decode(bytes, { stream: true });
		const lines = this.pending.split("\n");
		this.pending = lines.pop() ?? "";
		for (const line of lines) this.line(line.replace(/\r$/, ""));
	}

	private line(line: string): void {
		if (!line.startsWith("data:")) return;
		const data = line.slice(5).trim();
		if (data === "[DONE]" || data === "") return;
		let event: unknown;
		try {
			event = JSON.parse(data);
		} catch {
			this.unusable = true;
			return;
		}
		if (!isObj(event) || "error" in event) {
			this.unusable = true;
			return;
		}
		if (typeof event.id === "string" && this.id === "") this.id = event.id;
		if (typeof event.model === "string" && this.model === "") this.model = event.model;
		if (typeof event.created === "number" && this.created === null) this.created = event.created;
		const usage = usageOf(event);
		if (usage) this.usage = usage;
		if (!Array.isArray(event.choices)) return;
		for (const c of event.choices) {
			if (!isObj(c) || (c.index !== undefined && c.index !== 0)) {
				this.unusable = true;
				return;
			}
			if (this.api === "chat") {
				const d = c.delta;
				if (isObj(d)) {
					if ((d.tool_calls !== undefined && d.tool_calls !== null) || (d.function_call !== undefined && d.function_call !== null)) this.unusable = true;
					if (typeof d.content === "string") this.text += d.content;
				}
			} else if (typeof c.text === "string") this.text += c.text;
			if (typeof c.finish_reason === "string") this.finishReason = c.finish_reason;
		}
	}

	answer(nowSeconds: number): CachedAnswer | null {
		if (this.pending !== "") this.line(this.pending.replace(/\r$/, ""));
		this.pending = "";
		if (this.unusable || !this.watcher.sawDone || this.watcher.sawError) return null;
		return {
			v: 1,
			api: this.api,
			id: this.id,
			model: this.model || this.fallbackModel,
			created: this.created ?? nowSeconds,
			text: this.text,
			finishReason: this.finishReason ?? "stop",
			usage: this.usage,
		};
	}
}

/** A stored answer read back: null unless it has the stored shape (an entry from another version, say). */
export function parseCachedAnswer(value: unknown): CachedAnswer | null {
	if (!isObj(value) || value.v !== 1 || (value.api !== "chat" && value.api !== "completions")) return null;
	if (typeof value.id !== "string" || typeof value.model !== "string" || typeof value.created !== "number") return null;
	if (typeof value.text !== "string" || typeof value.finishReason !== "string") return null;
	return { v: 1, api: value.api, id: value.id, model: value.model, created: value.created, text: value.text, finishReason: value.finishReason, usage: usageOf(value) };
}

/** The non-streamed answer: a chat.completion or a text_completion. */
export function completionBody(a: CachedAnswer): Obj {
	const choice =
		a.api === "chat"
			? { index: 0, message: { role: "assistant", content: a.text }, finish_reason: a.finishReason }
			: { index: 0, text: a.text, logprobs: null, finish_reason: a.finishReason };
	const out: Obj = { id: a.id, object: a.api === "chat" ? "chat.completion" : "text_completion", created: a.created, model: a.model, choices: [choice] };
	if (a.usage) out.usage = a.usage;
	return out;
}

/** The streamed answer's SSE events, `data: [DONE]` last. */
export function replayEvents(a: CachedAnswer, includeUsage: boolean): string[] {
	const head = { id: a.id, object: a.api === "chat" ? "chat.completion.chunk" : "text_completion", created: a.created, model: a.model };
	const choice = (delta: Obj | string, finish: string | null) =>
		a.api === "chat" ? { index: 0, delta, finish_reason: finish } : { index: 0, text: delta, logprobs: null, finish_reason: finish };
	const events: Obj[] = [];
	if (a.api === "chat") events.push({ ...head, choices: [choice({ role: "assistant", content: "" }, null)] });
	if (a.text !== "") events.push({ ...head, choices: [choice(a.api === "chat" ? { content: a.text } : a.text, null)] });
	events.push({ ...head, choices: [choice(a.api === "chat" ? {} : "", a.finishReason)] });
	if (includeUsage && a.usage) events.push({ ...head, choices: [], usage: a.usage });
	return [...events.map((e) => `data: ${JSON.stringify(e)}\n\n`), "data: [DONE]\n\n"];
}

/** `stream_options.include_usage` of a parsed body. */
export const includeUsage = (raw: Record<string, unknown>): boolean => isObj(raw.stream_options) && raw.stream_options.include_usage === true;
