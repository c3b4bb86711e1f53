import { describe, expect, it } from "vitest";
import { edgeInputs, toChatCompletion, toOpenAiStream } from "../../src/edge";
import { parseChatRequest } from "../../src/request";
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
