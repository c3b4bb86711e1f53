import { describe, expect, it } from "vitest";
import { classify, estimatePromptTokens, parseRouteHint } from "../../src/classify";

const routing = { heavyPromptTokens: 100, heavyMaxTokens: 256 };
const msgs = (chars: number) => [{ role: "user", content: "x".repeat(chars) }];

describe("estimatePromptTokens", () => {
	it("is chars/4 rounded up plus 4 per message plus 3", () => {
		expect(estimatePromptTokens(msgs(0))).toBe(7);
		expect(estimatePromptTokens(msgs(1))).toBe(8);
		expect(estimatePromptTokens(msgs(400))).toBe(107);
		expect(estimatePromptTokens([...msgs(8), ...msgs(8)])).toBe(3 + 6 + 6);
	});
	it("counts text content parts and ignores images", () => {
		const m = [{ role: "user", content: [{ type: "text", text: "abcdefgh" }, { type: "image_url", image_url: { url: "x" } }] }];
		expect(estimatePromptTokens(m)).toBe(3 + 2 + 4);
	});
});

describe("classify", () => {
	const base = { edgeModel: "@cf/meta/llama-3.2-1b-instruct", routing, messages: msgs(40), maxTokens: null, hint: null } as const;
	it("sends a short request with an edge model to the edge", () => {
		expect(classify(base)).toMatchObject({ tier: "edge", reason: "light" });
	});
	it("sends everything to a region when the model has no edge model, whatever the client asks", () => {
		expect(classify({ ...base, edgeModel: null })).toMatchObject({ tier: "region", reason: "no-edge-model" });
		expect(classify({ ...base, edgeModel: null, hint: "edge" })).toMatchObject({ tier: "region", reason: "no-edge-model" });
	});
	it("is heavy once estimated prompt tokens reach the threshold", () => {
		// 3 + 4 + ceil(chars/4): 93 tokens of text reach 100
		expect(classify({ ...base, messages: msgs(368) })).toMatchObject({ tier: "edge", promptTokens: 99 });
		expect(classify({ ...base, messages: msgs(372) })).toMatchObject({ tier: "region", reason: "prompt-tokens", promptTokens: 100 });
	});
	it("is heavy once max_tokens reaches the threshold", () => {
		expect(classify({ ...base, maxTokens: 255 }).tier).toBe("edge");
		expect(classify({ ...base, maxTokens: 256 })).toMatchObject({ tier: "region", reason: "max-tokens" });
	});
	it("treats a threshold of 0 as every request heavy", () => {
		expect(classify({ ...base, routing: { heavyPromptTokens: 0, heavyMaxTokens: 256 } }).tier).toBe("region");
		expect(classify({ ...base, routing: { heavyPromptTokens: 100, heavyMaxTokens: 0 } }).tier).toBe("region");
	});
	it("sends a request with a field the edge cannot honour to a region, over an edge hint too", () => {
		expect(classify({ ...base, edgeUnsupported: "tools" })).toMatchObject({ tier: "region", reason: "edge-unsupported", field: "tools" });
		expect(classify({ ...base, edgeUnsupported: "tools", hint: "edge" })).toMatchObject({ tier: "region", reason: "edge-unsupported" });
		expect(classify({ ...base, edgeUnsupported: "tools", edgeModel: null })).toMatchObject({ tier: "region", reason: "no-edge-model" });
		expect(classify({ ...base, edgeUnsupported: null })).toMatchObject({ tier: "edge", reason: "light" });
	});
	it("follows x-backhaul-route", () => {
		expect(classify({ ...base, hint: "region" })).toMatchObject({ tier: "region", reason: "client-asked-region" });
		expect(classify({ ...base, messages: msgs(4000), hint: "edge" })).toMatchObject({ tier: "edge", reason: "client-asked-edge" });
	});
});

describe("parseRouteHint", () => {
	it("accepts region and edge, case-insensitively, and rejects anything else", () => {
		expect(parseRouteHint(null)).toBeNull();
		expect(parseRouteHint("Region")).toBe("region");
		expect(parseRouteHint(" edge ")).toBe("edge");
		expect(parseRouteHint("gpu")).toBe("invalid");
	});
});
