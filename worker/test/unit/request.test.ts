import { describe, expect, it } from "vitest";
import { ApiError } from "../../src/errors";
import { nonTextPart, parseCompletionRequest } from "../../src/request";

const enc = new TextEncoder();
const parse = (body: unknown) => parseCompletionRequest(enc.encode(JSON.stringify(body)), 100);
const paramOf = (f: () => unknown) => {
	try {
		f();
	} catch (e) {
		if (e instanceof ApiError) return `${e.status} ${e.param}`;
		throw e;
	}
	return "no error";
};

describe("completion requests", () => {
	it("takes one prompt string (or an array of one) with max_tokens and stream", () => {
		expect(parse({ model: "m", prompt: "Hi", max_tokens: 9, stream: true })).toMatchObject({ api: "completions", model: "m", prompt: "Hi", maxTokens: 9, stream: true });
		expect(parse({ model: "m", prompt: ["Hi"] })).toMatchObject({ prompt: "Hi", maxTokens: null, stream: false });
	});

	it("refuses a missing or malformed prompt, model or max_tokens, naming the field", () => {
		expect(paramOf(() => parse({ model: "m" }))).toBe("400 prompt");
		expect(paramOf(() => parse({ model: "m", prompt: ["a", "b"] }))).toBe("400 prompt");
		expect(paramOf(() => parse({ model: "m", prompt: { text: "a" } }))).toBe("400 prompt");
		expect(paramOf(() => parse({ prompt: "a" }))).toBe("400 model");
		expect(paramOf(() => parse({ model: "m", prompt: "a", max_tokens: 101 }))).toBe("400 max_tokens");
		expect(paramOf(() => parse({ model: "m", prompt: "a", stream: "yes" }))).toBe("400 stream");
	});
});

describe("content parts", () => {
	it("finds the first part that is not text, with where it is", () => {
		const text = { type: "text", text: "hi" };
		expect(nonTextPart([{ role: "user", content: "plain" }, { role: "user", content: [text, text] }])).toBeNull();
		expect(nonTextPart([{ role: "system", content: "s" }, { role: "user", content: [text, { type: "image_url", image_url: { url: "x" } }] }])).toEqual({
			at: "messages[1].content[1]",
			type: "image_url",
		});
		expect(nonTextPart([{ role: "user", content: [{ type: "input_image", image_url: "data:" }] }])).toEqual({ at: "messages[0].content[0]", type: "input_image" });
		expect(nonTextPart([{ role: "user", content: [{ text: "no type" }] }])?.type).toBe("unknown");
		expect(nonTextPart([{ role: "user", content: [{ type: "text" }] }])?.at).toBe("messages[0].content[0]");
	});
});
