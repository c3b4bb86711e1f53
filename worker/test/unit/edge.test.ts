import { describe, expect, it } from "vitest";
import { edgeInputs, edgeUnsupportedField, toChatCompletion, toOpenAiStream } from "../../src/edge";
import { parseChatRequest, parseCompletionRequest } from "../../src/request";
import { ssePayloads, sseContent } from "../helpers";

const enc = new TextEncoder();
const aiStream = (parts: string[], error?: Error) =>
	new ReadableStream<Uint8Array>({
		start(c) {
			for (const p of parts) c.enqueue(enc.encode(p));
			if (error) c.error(error);
			else c.close();
		},
	});

describe("edgeUnsupportedField", () => {
	const chatReq = (extra: Record<string, unknown>, messages: unknown[] = [{ role: "user", content: "hi" }]) =>
		parseChatRequest(enc.encode(JSON.stringify({ model: "m", messages, ...extra })));
	const completionReq = (extra: Record<string, unknown>) => parseCompletionRequest(enc.encode(JSON.stringify({ model: "m", prompt: "p", ...extra })));
	it("names the first field a region acts on and the edge would drop", () => {
		expect(edgeUnsupportedField(chatReq({ tools: [{ type: "function", function: { name: "f" } }] }))).toBe("tools");
		expect(edgeUnsupportedField(chatReq({ tool_choice: "required" }))).toBe("tool_choice");
		expect(edgeUnsupportedField(chatReq({ response_format: { type: "json_object" } }))).toBe("response_format");
		expect(edgeUnsupportedField(chatReq({ response_format: {} }))).toBe("response_format");
		expect(edgeUnsupportedField(chatReq({ stop: "x" }))).toBe("stop");
		expect(edgeUnsupportedField(chatReq({ stop: "" }))).toBe("stop");
		expect(edgeUnsupportedField(chatReq({ min_p: 0 }))).toBe("min_p");
		expect(edgeUnsupportedField(chatReq({ n: 3 }))).toBe("n");
		expect(edgeUnsupportedField(chatReq({ logprobs: true }))).toBe("logprobs");
		expect(edgeUnsupportedField(chatReq({ top_logprobs: 0 }))).toBe("top_logprobs");
		expect(edgeUnsupportedField(completionReq({ echo: true }))).toBe("echo");
		expect(edgeUnsupportedField(completionReq({ suffix: "" }))).toBe("suffix");
		expect(edgeUnsupportedField(completionReq({ stop: ["\n"] }))).toBe("stop");
		// What a region refuses, rather than the edge dropping it.
		expect(edgeUnsupportedField(chatReq({ logit_bias: { "1": 5 } }))).toBe("logit_bias");
		expect(edgeUnsupportedField(chatReq({ functions: [{ name: "f" }] }))).toBe("functions");
		expect(edgeUnsupportedField(chatReq({ function_call: "auto" }))).toBe("function_call");
		expect(edgeUnsupportedField(chatReq({ audio: { voice: "alloy" } }))).toBe("audio");
		expect(edgeUnsupportedField(chatReq({ modalities: ["text", "audio"] }))).toBe("modalities");
		expect(edgeUnsupportedField(chatReq({ prediction: { type: "content", content: "x" } }))).toBe("prediction");
		expect(edgeUnsupportedField(chatReq({ web_search_options: {} }))).toBe("web_search_options");
		expect(edgeUnsupportedField(chatReq({ reasoning_effort: "low" }))).toBe("reasoning_effort");
		expect(edgeUnsupportedField(chatReq({ verbosity: "low" }))).toBe("verbosity");
		expect(edgeUnsupportedField(completionReq({ best_of: 2 }))).toBe("best_of");
		expect(edgeUnsupportedField(completionReq({ logprobs: 3 }))).toBe("logprobs");
		expect(edgeUnsupportedField(completionReq({ logit_bias: { "1": 5 } }))).toBe("logit_bias");
	});
	it("names messages for a conversation with tool calls or tool results", () => {
		expect(edgeUnsupportedField(chatReq({}, [{ role: "tool", tool_call_id: "c", content: "r" }]))).toBe("messages");
		expect(edgeUnsupportedField(chatReq({}, [{ role: "function", name: "f", content: "r" }]))).toBe("messages");
		expect(edgeUnsupportedField(chatReq({}, [{ role: "assistant", content: null, tool_calls: [{ id: "c" }] }]))).toBe("messages");
		expect(edgeUnsupportedField(chatReq({}, [{ role: "assistant", content: null, function_call: { name: "f" } }]))).toBe("messages");
		expect(edgeUnsupportedField(chatReq({}, [{ role: "assistant", content: "ok", tool_calls: [] }]))).toBeNull();
	});
	it("is null for values that change nothing, for fields the edge passes on and for fields neither tier acts on", () => {
		for (const extra of [
			{},
			{ tools: [], tool_choice: "none", parallel_tool_calls: false, response_format: { type: "text" }, stop: [], n: 1, logprobs: false },
			{ tools: null, tool_choice: null, response_format: null, stop: null, min_p: null, n: null, logprobs: null, top_logprobs: null },
			{ tool_choice: "auto" },
			{ temperature: 0, top_p: 0.9, top_k: 4, seed: 7, frequency_penalty: 1, presence_penalty: 1, max_tokens: 5, stream: true },
			{ user: "u", metadata: {}, store: true, logit_bias: {}, service_tier: "auto", functions: [], function_call: "none", modalities: ["text"] },
		]) {
			expect(edgeUnsupportedField(chatReq(extra)), JSON.stringify(extra)).toBeNull();
		}
		expect(edgeUnsupportedField(completionReq({ echo: false, n: 1, stop: null, best_of: 1, logprobs: 0, logit_bias: {} }))).toBeNull();
		expect(edgeUnsupportedField(completionReq({ logprobs: false }))).toBeNull();
		// tools and response_format mean something only to chat.
		expect(edgeUnsupportedField(completionReq({ tools: [{}], response_format: { type: "json_object" } }))).toBeNull();
	});
});

describe("edge conversion", () => {
	it("maps an OpenAI request onto Workers AI inputs", () => {
		const req = parseChatRequest(
			enc.encode(JSON.stringify({ model: "m", messages: [{ role: "user", content: [{ type: "text", text: "hi" }] }], max_completion_tokens: 9, temperature: 0.2, stream: true })),
		);
		expect(edgeInputs(req)).toEqual({ messages: [{ role: "user", content: "hi" }], stream: true, max_tokens: 9, temperature: 0.2 });
	});
	it("turns a Workers AI result into a chat.completion", () => {
		const c = toChatCompletion({ response: "hello", usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 } }, "m", 5);
		expect(c).toMatchObject({ object: "chat.completion", model: "m", created: 5, choices: [{ message: { role: "assistant", content: "hello" }, finish_reason: "stop" }] });
		expect(c.usage).toEqual({ prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 });
	});
	it("turns a Workers AI SSE stream into OpenAI chunks, events split across reads included", async () => {
		const source = aiStream(['data: {"response":"Hel', 'lo"}\n\ndata: {"response":" world"}\n\n', "data: [DONE]\n\n"]);
		const text = await new Response(toOpenAiStream(source, "m", 1)).text();
		expect(sseContent(text)).toBe("Hello world");
		const payloads = ssePayloads(text);
		expect(payloads.at(-1)).toBe("[DONE]");
		expect(JSON.parse(payloads.at(-2)!)).toMatchObject({ object: "chat.completion.chunk", choices: [{ finish_reason: "stop" }] });
	});
	it("ends a failed or truncated edge stream with an error event and [DONE]", async () => {
		for (const source of [aiStream(['data: {"response":"Hi"}\n\n'], new Error("boom")), aiStream(['data: {"response":"Hi"}\n\n'])]) {
			const payloads = ssePayloads(await new Response(toOpenAiStream(source, "m", 1)).text());
			expect(payloads.at(-1)).toBe("[DONE]");
			expect(JSON.parse(payloads.at(-2)!)).toMatchObject({ error: { type: "server_error" } });
		}
	});
});
