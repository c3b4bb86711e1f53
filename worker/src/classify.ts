/**
 * Light or heavy: where one chat completion should run. Pure.
 *
 * Prompt tokens are estimated without a tokenizer as
 *   sum over messages of ceil(chars(content) / 4) + 4
 * plus 3 for the reply's priming: about four characters per token for English
 * text (OpenAI's rule of thumb) and the chat template's few tokens per message.
 * It errs high on code and non-Latin text, which only sends more to regions.
 * A legacy completion's prompt has no template: ceil(chars(prompt) / 4).
 */
import type { Routing } from "./route";

export const CHARS_PER_TOKEN = 4;
export const TOKENS_PER_MESSAGE = 4;
export const TOKENS_PER_REPLY = 3;

export interface ChatMessage {
	role: string;
	content: unknown;
	[k: string]: unknown;
}

/** Characters of text in a message's content: a string, or OpenAI content parts. */
export function contentChars(content: unknown): number {
	if (typeof content === "string") return content.length;
	if (Array.isArray(content)) {
		let n = 0;
		for (const part of content) {
			if (typeof part === "object" && part !== null && typeof (part as { text?: unknown }).text === "string") {
				n += (part as { text: string }).text.length;
			}
		}
		return n;
	}
	return 0;
}

export function estimatePromptTokens(messages: readonly ChatMessage[]): number {
	let tokens = TOKENS_PER_REPLY;
	for (const m of messages) tokens += Math.ceil(contentChars(m.content) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE;
	return tokens;
}

/** A legacy completion's prompt: no chat template around it. */
export const estimateTextTokens = (prompt: string): number => Math.ceil(prompt.length / CHARS_PER_TOKEN);

/** `x-backhaul-route`: `region` forces a region; `edge` asks for the edge when the model has one. */
export type RouteHint = "region" | "edge" | null;

export function parseRouteHint(header: string | null): RouteHint | "invalid" {
	if (header === null || header === "") return null;
	const v = header.trim().toLowerCase();
	return v === "region" || v === "edge" ? v : "invalid";
}

export type Tier = "edge" | "region";

export interface Classification {
	tier: Tier;
	reason:
		| "no-edge-model"
		| "client-asked-region"
		| "client-asked-edge"
		| "prompt-tokens"
		| "max-tokens"
		| "edge-unsupported"
		| "light";
	promptTokens: number;
	/** for `edge-unsupported`: the request field the edge cannot honour */
	field?: string;
}

/**
 * Heavy (region) when the model has no edge model, the client asks for a
 * region, the request sets a field the edge cannot honour (`edgeUnsupported`,
 * from edge.ts: tools, JSON mode, stop sequences, …), or the estimated prompt
 * tokens or max_tokens reach the published thresholds (a threshold of 0 makes
 * every request heavy). `edge` from the client overrides the thresholds, not
 * a missing edge model nor a field the edge would drop.
 */
export function classify(
	input: {
		edgeModel: string | null;
		routing: Pick<Routing, "heavyPromptTokens" | "heavyMaxTokens">;
		maxTokens: number | null;
		hint: RouteHint;
		/** the first field the edge cannot honour (edge.ts's edgeUnsupportedField); null or absent: none */
		edgeUnsupported?: string | null;
	} & ({ messages: readonly ChatMessage[] } | { prompt: string }),
): Classification {
	const promptTokens = "prompt" in input ? estimateTextTokens(input.prompt) : estimatePromptTokens(input.messages);
	const c = (tier: Tier, reason: Classification["reason"]): Classification => ({ tier, reason, promptTokens });
	if (input.edgeModel === null) return c("region", "no-edge-model");
	if (input.hint === "region") return c("region", "client-asked-region");
	if (input.edgeUnsupported) return { ...c("region", "edge-unsupported"), field: input.edgeUnsupported };
	if (input.hint === "edge") return c("edge", "client-asked-edge");
	if (promptTokens >= input.routing.heavyPromptTokens) return c("region", "prompt-tokens");
	if (input.maxTokens !== null && input.maxTokens >= input.routing.heavyMaxTokens) return c("region", "max-tokens");
	if (input.routing.heavyMaxTokens === 0) return c("region", "max-tokens");
	return c("edge", "light");
}
