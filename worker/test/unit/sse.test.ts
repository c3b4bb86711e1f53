import { describe, expect, it } from "vitest";
import { SseWatcher } from "../../src/sse";

// What sse.ts stands in for: these regexes on the whole text so far (\s as ASCII whitespace).
const WS = "[ \\t\\n\\v\\f\\r]";
const DONE_RE = new RegExp(`(^|\\n)data:${WS}*\\[DONE\\]`);
const ERROR_RE = new RegExp(`(^|\\n)data:${WS}*\\{${WS}*"error"${WS}*:`);
const enc = new TextEncoder();

function watch(chunks: string[]): SseWatcher {
	const w = new SseWatcher();
	for (const c of chunks) w.push(enc.encode(c));
	return w;
}

describe("SseWatcher", () => {
	it("sees data: [DONE] and error events at the start of a line", () => {
		expect(watch(['data: {"choices":[]}\n\n', "data: [DONE]\n\n"]).sawDone).toBe(true);
		expect(watch(["data:[DONE]"]).sawDone).toBe(true);
		expect(watch(['data: {"error":{"message":"cut short"}}\n\n']).sawError).toBe(true);
		expect(watch(['data: { "error" : {}}']).sawError).toBe(true);
		const w = watch(['data: {"choices":[]}\n\n']);
		expect([w.sawDone, w.sawError]).toEqual([false, false]);
	});

	it("follows events split anywhere across chunks", () => {
		const text = 'data: {"choices":[]}\n\ndata: {"error":{"message":"x"}}\n\ndata: [DONE]\n\n';
		for (let cut = 1; cut < text.length; cut++) {
			const w = watch([text.slice(0, cut), text.slice(cut)]);
			expect([w.sawDone, w.sawError]).toEqual([true, true]);
		}
		expect(watch(["da", "ta", ":", " [", "DO", "NE", "]"]).sawDone).toBe(true);
	});

	it("ignores them mid-line, inside content, or malformed", () => {
		expect(watch(['data: {"content":"data: [DONE]"}\n\n']).sawDone).toBe(false);
		expect(watch(["x data: [DONE]"]).sawDone).toBe(false);
		expect(watch(["data: [DONE"]).sawDone).toBe(false);
		expect(watch(["data: [[DONE]"]).sawDone).toBe(false);
		expect(watch(['data: {"choices":[{"error":1}]}']).sawError).toBe(false);
		expect(watch(['data: {"errors":1}']).sawError).toBe(false);
	});

	it("agrees with the regexes on random streams cut at random places", () => {
		const tokens = ["data:", "data: ", " ", "\n", "\r\n", "\t", "[DONE]", "[DONE", "DONE]", "[", "{", '"error"', '"err', 'or"', ":", "d", "da", "x", '"', "é",
			"data: [DONE]\n\n", 'data: {"error":', 'data: {"choices":[]}\n\n', "\n\n"];
		let seed = 42;
		const rand = (n: number) => {
			seed = (seed * 1103515245 + 12345) % 2147483648;
			return seed % n;
		};
		for (let t = 0; t < 20000; t++) {
			let text = "";
			for (let i = 1 + rand(12); i > 0; i--) text += tokens[rand(tokens.length)];
			const bytes = enc.encode(text);
			const w = new SseWatcher();
			for (let at = 0; at < bytes.length; ) {
				const len = 1 + rand(6);
				w.push(bytes.subarray(at, at + len));
				at += len;
			}
			expect({ text, done: w.sawDone, error: w.sawError }).toEqual({ text, done: DONE_RE.test(text), error: ERROR_RE.test(text) });
		}
	});
});
