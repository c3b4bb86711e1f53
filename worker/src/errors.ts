/**
 * OpenAI-shaped errors: `{"error":{"message","type","code","param"}}`.
 * Every non-2xx answer the Worker produces itself goes through here, so
 * OpenAI clients surface the message as they would OpenAI's own.
 */
export type ErrorType =
	| "invalid_request_error"
	| "authentication_error"
	| "permission_error"
	| "not_found_error"
	| "rate_limit_error"
	| "service_unavailable"
	| "server_error";

export interface ApiErrorBody {
	error: { message: string; type: ErrorType; code: string; param: string | null };
}

export class ApiError extends Error {
	constructor(
		readonly status: number,
		readonly type: ErrorType,
		readonly code: string,
		message: string,
		readonly param: string | null = null,
		readonly headers: Record<string, string> = {},
	) {
		super(message);
	}

	body(): ApiErrorBody {
		return { error: { message: this.message, type: this.type, code: this.code, param: this.param } };
	}

	toResponse(extraHeaders: Record<string, string> = {}): Response {
		return Response.json(this.body(), {
			status: this.status,
			headers: { ...this.headers, ...extraHeaders },
		});
	}
}

export const badRequest = (message: string, param: string | null = null, code = "invalid_request") =>
	new ApiError(400, "invalid_request_error", code, message, param);

/** The SSE event that ends a stream whose upstream failed after the first byte. */
export function sseErrorEvent(message: string, code = "upstream_error"): string {
	const body: ApiErrorBody = { error: { message, type: "server_error", code, param: null } };
	return `data: ${JSON.stringify(body)}\n\ndata: [DONE]\n\n`;
}
