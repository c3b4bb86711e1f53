/**
 * Backhaul's routing Worker: an OpenAI-compatible front door that answers
 * light chat and (legacy) completions on Workers AI at the edge and sends
 * heavy ones to the nearest live GPU region, failing over between regions.
 * The operator keeps the route table current through the signed admin API
 * (docs/publication.md). Decisions live in pure modules (classify, rank,
 * failover, route, signature, trace, access-log, and the response cache's
 * cache-policy, cache-key and cached-answer); this file wires them to I/O.
 */
import { accessRecord, newAccessInfo, usageOf, type AccessInfo, type StreamEnd } from "./access-log";
import { writeDataPoint } from "./analytics";
import { cacheKey } from "./cache-key";
import { cacheDecision, parseCacheModels, parseTtlHeader, type CacheModels } from "./cache-policy";
import { completionBody, fromCompletion, includeUsage, replayEvents, StreamCollector, type CachedAnswer } from "./cached-answer";
import { ABANDON_POLL_MS, board, land, type Flight } from "./coalesce";
import { handleAdmin, ADMIN_ROOT } from "./admin";
import { authenticate, checkRouteHint, type Caller } from "./auth";
import { classify, parseRouteHint, type Classification } from "./classify";
import { edgeInputs, edgeUnsupportedField, toChatCompletion, toOpenAiStream, toTextCompletion, withFirstChunk, type AiRunner } from "./edge";
import { ApiError, badRequest } from "./errors";
import { cooldownUntil, DEFAULT_MAX_UPSTREAM_BODY_BYTES, forwardToRegions, type RegionAttemptLog, type UpstreamPath } from "./proxy";
import { locationFromCf, parseLocation, rankRegions, isLive, type LatLon } from "./rank";
import { DEFAULT_MAX_TOKENS_LIMIT, nonTextPart, parseChatRequest, parseCompletionRequest, readBodyCapped, type GenerationRequest } from "./request";
import { cacheUrl, lookup, store } from "./response-cache";
import { routeKey, type StoredRoute } from "./route";
import { loadCatalog, loadModel } from "./route-cache";
import { traceContext, upstreamTraceHeaders, type TraceContext } from "./trace";
import { positiveIntVar } from "./vars";

export { RouteTable } from "./table";

const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;

/** The generation endpoints: each is forwarded to the same path at a region. */
const GENERATION_PATHS: Record<string, { path: UpstreamPath; parse: (body: Uint8Array, maxTokensLimit: number) => GenerationRequest }> = {
	"/v1/chat/completions": { path: "/v1/chat/completions", parse: parseChatRequest },
	"/v1/completions": { path: "/v1/completions", parse: parseCompletionRequest },
};

export default {
	async fetch(request, env, ctx): Promise<Response> {
		const started = Date.now();
		const url = new URL(request.url);
		const trace = traceContext(request.headers);
		const info = newAccessInfo();
		const response = ownHeaders(await handle(request, env, ctx, url, trace, info), trace);
		const ttfbMs = Date.now() - started;
		if (info.cache !== "none") response.headers.set("x-backhaul-cache", info.cache.toUpperCase());
		if (url.pathname.startsWith("/v1/")) {
			// One record per request: the access log line, and the same record as an Analytics Engine data point.
			const log = (streamEnd: StreamEnd | null) => {
				const record = accessRecord({ trace, method: request.method, path: url.pathname, status: response.status, info, streamEnd, ttfbMs, durationMs: Date.now() - started });
				console.log(JSON.stringify(record));
				writeDataPoint(env.ANALYTICS as AnalyticsEngineDataset | undefined, record);
			};
			// A relayed stream is logged once it has ended.
			if (info.streamEnd) ctx.waitUntil(info.streamEnd.then(log, () => log(null)));
			else log(null);
		}
		return response;
	},
} satisfies ExportedHandler<Env>;

/**
 * Every answer carries the request id (the client's or the Worker's; trace.ts)
 * and is marked `x-content-type-options: nosniff`: a browser never
 * second-guesses the Worker's content-type (an upstream body is only ever
 * served as application/json or text/event-stream).
 */
function ownHeaders(response: Response, trace: TraceContext): Response {
	const set = (r: Response) => {
		r.headers.set("x-content-type-options", "nosniff");
		r.headers.set("x-request-id", trace.requestId);
		return r;
	};
	try {
		return set(response);
	} catch {
		// Immutable headers (a fetch's response): copy them.
		return set(new Response(response.body, response));
	}
}

async function handle(request: Request, env: Env, ctx: ExecutionContext, url: URL, trace: TraceContext, info: AccessInfo): Promise<Response> {
	try {
		if (url.pathname === "/health") {
			if (request.method !== "GET" && request.method !== "HEAD") throw methodNotAllowed("GET");
			return Response.json({ status: "ok" });
		}
		if (url.pathname === ADMIN_ROOT || url.pathname.startsWith(`${ADMIN_ROOT}/`)) {
			return await handleAdmin(request, env, url);
		}
		if (url.pathname === "/v1/models") {
			if (request.method !== "GET") throw methodNotAllowed("GET");
			await authenticate(request, env, info);
			return await listModels(env);
		}
		const generation = GENERATION_PATHS[url.pathname];
		if (generation) {
			if (request.method !== "POST") throw methodNotAllowed("POST");
			const caller = await authenticate(request, env, info);
			return await generate(request, env, ctx, caller, generation, trace, info);
		}
		throw new ApiError(404, "not_found_error", "not_found", `No route for ${request.method} ${url.pathname}.`);
	} catch (err) {
		if (err instanceof ApiError) {
			info.errorCode = err.code;
			return err.toResponse();
		}
		console.error("unhandled error", err);
		info.errorCode = "internal_error";
		return new ApiError(500, "server_error", "internal_error", "The Worker failed to handle the request.").toResponse();
	}
}

const methodNotAllowed = (allowed: string) =>
	new ApiError(405, "invalid_request_error", "method_not_allowed", `Use ${allowed}.`, null, { allow: allowed });

/** A model's reference route: thresholds and edge model come from the newest live route, else the newest route (by receive time). */
export function referenceRoute(routes: readonly StoredRoute[], nowMs: number): StoredRoute | null {
	// Newest by the Worker's own receive time: publishedAt is the sender's claim.
	const newest = (rs: readonly StoredRoute[]) => rs.reduce<StoredRoute | null>((best, r) => (!best || r.receivedAtMs > best.receivedAtMs ? r : best), null);
	return newest(routes.filter((r) => isLive(r, nowMs, new Map()))) ?? newest(routes);
}

async function listModels(env: Env): Promise<Response> {
	const now = Date.now();
	const routes = await loadCatalog(env, now);
	const models = new Map<string, string>();
	for (const r of routes) {
		if (isLive(r, now, cooldownUntil) || r.edgeModel !== null) models.set(r.model, "backhaul");
	}
	for (const r of routes) if (r.edgeModel !== null && !models.has(r.edgeModel)) models.set(r.edgeModel, "backhaul-edge");
	const created = Math.floor(now / 1000);
	return Response.json({
		object: "list",
		data: [...models].sort(([a], [b]) => (a < b ? -1 : 1)).map(([id, owned_by]) => ({ id, object: "model", created, owned_by })),
	});
}

/** request.cf's location, or the x-backhaul-client-location header where TRUST_LOCATION_HEADER is "true". */
function clientLocation(request: Request, env: Env): LatLon | null {
	if (env.TRUST_LOCATION_HEADER === "true") {
		const fromHeader = parseLocation(request.headers.get("x-backhaul-client-location"));
		if (fromHeader) return fromHeader;
	}
	return locationFromCf(request.cf as { latitude?: unknown; longitude?: unknown } | undefined);
}

/** The Cloudflare Access service token headers, when both secrets are set (docs/publication.md). */
function accessHeaders(env: Env): Record<string, string> {
	const { CF_ACCESS_CLIENT_ID: id, CF_ACCESS_CLIENT_SECRET: secret } = env as { CF_ACCESS_CLIENT_ID?: string; CF_ACCESS_CLIENT_SECRET?: string };
	return id && secret ? { "cf-access-client-id": id, "cf-access-client-secret": secret } : {};
}

/**
 * A chat or legacy completion: the same classification, edge attempt and
 * region failover for both; only the parsing, the edge's answer shape and
 * the region's path differ.
 */
async function generate(
	request: Request,
	env: Env,
	ctx: ExecutionContext,
	caller: Caller,
	endpoint: (typeof GENERATION_PATHS)[string],
	trace: TraceContext,
	info: AccessInfo,
): Promise<Response> {
	const body = await readBodyCapped(request, positiveIntVar(env.MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES));
	const req = endpoint.parse(body, positiveIntVar(env.MAX_TOKENS_LIMIT, DEFAULT_MAX_TOKENS_LIMIT));
	info.model = req.model;
	info.stream = req.stream;
	if (req.api === "chat") {
		// Neither tier takes anything but text (request.ts): refused, never dropped.
		const part = nonTextPart(req.messages);
		if (part) {
			throw badRequest(
				`'${part.at}' is a '${part.type}' part; this model takes text only (its edge and regions are text models): send text content parts.`,
				"messages",
				"unsupported_content_part",
			);
		}
	}
	const hint = parseRouteHint(request.headers.get("x-backhaul-route"));
	if (hint === "invalid") throw badRequest("x-backhaul-route must be 'edge' or 'region'.", "x-backhaul-route");
	checkRouteHint(caller, hint !== null);

	const nowMs = Date.now();
	const { routes: modelRoutes, edgeServed } = await loadModel(env, req.model, nowMs);
	const ref = referenceRoute(modelRoutes, nowMs);
	// A client may also name an edge model itself: it runs only at the edge.
	const edgeOnly = !ref && edgeServed;
	if (!ref && !edgeOnly) {
		throw new ApiError(404, "not_found_error", "model_not_found", `The model '${req.model}' does not exist or is not published.`, "model");
	}
	// A field the edge would drop sends the request to a region (edge.ts).
	const edgeUnsupported = edgeUnsupportedField(req);
	if (edgeOnly && edgeUnsupported) {
		throw badRequest(
			`'${edgeUnsupported}' is not supported by the edge model '${req.model}': it runs on Workers AI only, which gets text, max_tokens and sampling options; name a model a region serves.`,
			edgeUnsupported,
			"unsupported_parameter",
		);
	}
	const classification: Classification = edgeOnly
		? { tier: "edge", reason: "client-asked-edge", promptTokens: 0 }
		: classify({
				edgeModel: ref!.edgeModel,
				routing: ref!.routing,
				maxTokens: req.maxTokens,
				hint,
				edgeUnsupported,
				...(req.api === "chat" ? { messages: req.messages } : { prompt: req.prompt }),
			});
	const edgeModel = edgeOnly ? req.model : ref!.edgeModel;
	info.tier = classification.tier;
	info.reason = classification.reason;

	/** The generation itself, edge then regions; `signal` is the client's, or a coalesced flight's. */
	const run = (signal: AbortSignal | undefined) =>
		answer({ request, env, ctx, req, body, endpoint, trace, info, modelRoutes, nowMs, edgeOnly, edgeModel, classification, signal }).catch((err: unknown) => {
			// A coalesced flight's leader turns the error into its answer itself (lead()): record the code here.
			if (err instanceof ApiError) info.errorCode = err.code;
			throw err;
		});

	const decision = cacheDecision({
		raw: req.raw,
		model: req.model,
		skipHeader: request.headers.get("x-backhaul-skip-cache"),
		ttlHeader: parseTtlHeader(request.headers.get("x-backhaul-cache-ttl")),
		models: cacheModels(env),
		defaultTtlSeconds: nonNegativeInt(env.CACHE_TTL_SECONDS, 0),
	});
	if (decision.kind !== "cache") {
		info.cache = decision.kind;
		return run(request.signal);
	}
	const key = await cacheKey(req, decision.shared ? "shared" : (caller.keyHash ?? "anonymous"));
	const entryUrl = cacheUrl(new URL(request.url).origin, key);
	const hit = await lookup(entryUrl);
	if (hit && hit.api === req.api) {
		info.cache = "hit";
		info.usage = hit.usage;
		return replay(hit, req);
	}
	info.cache = "miss";
	// Identical requests share a generation only when they want the same bytes back.
	const flightKey = `${key}:${req.stream ? (includeUsage(req.raw) ? "sse+usage" : "sse") : "json"}`;
	const { flight, leader } = board(flightKey);
	if (leader) ctx.waitUntil(lead(flight, flightKey, run, { api: req.api, model: req.model, stream: req.stream, url: entryUrl, ttlSeconds: decision.ttlSeconds }));
	else info.coalesced = true;
	const { head, body: shared } = await flight.join(request.signal, leader);
	return new Response(shared, { status: head.status, headers: head.headers });
}

let cacheModelsMemo: { raw: string | undefined; models: CacheModels } | null = null;
/** CACHE_MODELS, parsed once per isolate (per value). */
function cacheModels(env: Env): CacheModels {
	const raw = env.CACHE_MODELS;
	if (!cacheModelsMemo || cacheModelsMemo.raw !== raw) cacheModelsMemo = { raw, models: parseCacheModels(raw) };
	return cacheModelsMemo.models;
}

function nonNegativeInt(value: string | undefined, fallback: number): number {
	const v = Number(value);
	return value !== undefined && value.trim() !== "" && Number.isInteger(v) && v >= 0 ? v : fallback;
}

/** A stored answer, as the request asked for it: a completion object, or its SSE replay. */
function replay(hit: CachedAnswer, req: GenerationRequest): Response {
	const headers = { "x-backhaul-attempts": "0" };
	if (!req.stream) return Response.json(completionBody(hit), { headers });
	return new Response(replayEvents(hit, includeUsage(req.raw)).join(""), {
		headers: { ...headers, "content-type": "text/event-stream", "cache-control": "no-cache" },
	});
}

/**
 * A coalesced flight's leader task: runs the generation once under the
 * flight's own signal (aborted when every waiter has left), records its
 * answer into the flight for every waiter, and stores it in the cache when
 * it is complete (a 200, and for a stream [DONE] with no error event) before
 * ending the flight, so a client that has the whole answer finds it stored.
 */
async function lead(
	flight: Flight,
	flightKey: string,
	run: (signal: AbortSignal) => Promise<Response>,
	c: { api: "chat" | "completions"; model: string; stream: boolean; url: string; ttlSeconds: number },
): Promise<void> {
	const controller = new AbortController();
	let reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
	let abandoned = false;
	// Waiters leave from their own requests, which cannot signal this one: look.
	const watch = setInterval(() => {
		if (abandoned || !flight.abandoned()) return;
		abandoned = true;
		controller.abort(new Error("every waiter left"));
		void reader?.cancel("every waiter left").catch(() => {});
	}, ABANDON_POLL_MS);
	try {
		let response: Response;
		try {
			response = await run(controller.signal);
		} catch (err) {
			if (!(err instanceof ApiError)) console.error("unhandled error", err);
			response = err instanceof ApiError ? err.toResponse() : new ApiError(500, "server_error", "internal_error", "The Worker failed to handle the request.").toResponse();
		}
		flight.setHead({ status: response.status, headers: [...response.headers] });
		const collector = c.stream ? new StreamCollector(c.api, c.model) : null;
		const whole: Uint8Array[] = [];
		let complete = true;
		if (response.body) {
			reader = response.body.getReader();
			if (abandoned) void reader.cancel().catch(() => {});
			try {
				for (;;) {
					const { done, value } = await reader.read();
					if (done) break;
					flight.push(value);
					if (collector) collector.push(value);
					else whole.push(value);
				}
			} catch {
				complete = false;
			}
		}
		// Stored before the flight ends: a client that has read the whole answer finds it in the cache.
		if (!complete || abandoned || response.status !== 200) return;
		const now = Math.floor(Date.now() / 1000);
		let stored: CachedAnswer | null;
		if (collector) stored = collector.answer(now);
		else {
			try {
				stored = fromCompletion(c.api, JSON.parse(new TextDecoder().decode(concat(whole))), c.model, now);
			} catch {
				stored = null;
			}
		}
		if (stored) await store(c.url, stored, c.ttlSeconds);
	} finally {
		clearInterval(watch);
		land(flightKey, flight);
		flight.end();
	}
}

function concat(chunks: Uint8Array[]): Uint8Array {
	const out = new Uint8Array(chunks.reduce((n, ch) => n + ch.byteLength, 0));
	let at = 0;
	for (const ch of chunks) {
		out.set(ch, at);
		at += ch.byteLength;
	}
	return out;
}

/** The edge attempt, then the regions in order, for one classified request. */
async function answer(a: {
	request: Request;
	env: Env;
	ctx: ExecutionContext;
	req: GenerationRequest;
	body: Uint8Array;
	endpoint: (typeof GENERATION_PATHS)[string];
	trace: TraceContext;
	info: AccessInfo;
	modelRoutes: readonly StoredRoute[];
	nowMs: number;
	edgeOnly: boolean;
	edgeModel: string | null;
	classification: Classification;
	signal: AbortSignal | undefined;
}): Promise<Response> {
	const { request, env, ctx, req, body, endpoint, trace, info, modelRoutes, nowMs, edgeOnly, edgeModel, classification } = a;
	let attempts = 0;
	let edgeFailure: string | null = null;
	if (classification.tier === "edge" && edgeModel !== null) {
		const ai = env.AI as AiRunner | undefined;
		if (!ai) edgeFailure = "the AI binding is not configured";
		else {
			attempts++;
			const edgeStarted = Date.now();
			try {
				const result = await ai.run(edgeModel, edgeInputs(req));
				const response = await edgeResponse(result, req);
				info.attempts.push({ region: "edge", outcome: "answered", ttfbMs: Date.now() - edgeStarted });
				if (!req.stream) info.usage = usageOf(result);
				return withRouting(response, { tier: "edge", region: "edge", attempts, classification });
			} catch (err) {
				edgeFailure = `Workers AI failed: ${String(err)}`;
				info.attempts.push({ region: "edge", outcome: edgeFailure.slice(0, 200), ttfbMs: null });
				console.warn("edge failed, falling back to a region", { model: edgeModel, error: String(err) });
			}
		}
	}
	if (edgeOnly) {
		throw new ApiError(503, "service_unavailable", "edge_unavailable", `The edge model '${req.model}' is unavailable (${edgeFailure}) and no region serves it.`);
	}

	// A location only orders two or more routes (reading request.cf parses it).
	const ordering = modelRoutes.length > 1;
	const ranked = rankRegions({
		routes: modelRoutes,
		model: req.model,
		client: ordering ? clientLocation(request, env) : null,
		fallback: ordering ? parseLocation(env.DEFAULT_LOCATION) : null,
		nowMs,
		cooldownUntil,
	});
	if (ranked.routes.length === 0) {
		const attemptsHeader = { "x-backhaul-attempts": String(attempts) };
		// Live but cooling down after a 429: the client should come back, not give up.
		const cooling = modelRoutes.filter((r) => isLive(r, nowMs, new Map())).map((r) => cooldownUntil.get(routeKey(r)) ?? nowMs);
		if (cooling.length > 0) {
			const retryAfter = String(Math.max(1, Math.ceil((Math.min(...cooling) - nowMs) / 1000)));
			throw new ApiError(429, "rate_limit_error", "regions_saturated", `Every region serving '${req.model}' is saturated; retry after ${retryAfter} s.`, null, {
				...attemptsHeader,
				"retry-after": retryAfter,
			});
		}
		const message = edgeFailure
			? `No live region serves '${req.model}', and the edge could not take the request: ${edgeFailure}.`
			: `No live region serves '${req.model}', and this request needs one (${classification.reason}${classification.field ? `: '${classification.field}'` : ""}).`;
		throw new ApiError(503, "service_unavailable", "no_live_region", message, null, attemptsHeader);
	}
	const maxAttempts = ranked.routes[0]!.routing.failoverAttempts;
	info.tier = "region";
	// The region attempts, in the access log after the edge's (if any).
	const regionLog: RegionAttemptLog[] = [];
	try {
		const result = await forwardToRegions({
			routes: ranked.routes,
			path: endpoint.path,
			body,
			stream: req.stream,
			maxAttempts,
			clientSignal: a.signal,
			ctx,
			accessHeaders: accessHeaders(env),
			maxUpstreamBodyBytes: positiveIntVar(env.MAX_UPSTREAM_BODY_BYTES, DEFAULT_MAX_UPSTREAM_BODY_BYTES),
			traceHeaders: () => upstreamTraceHeaders(trace),
			log: regionLog,
		});
		info.usage = result.usage;
		info.streamEnd = result.streamEnd;
		info.errorCode = result.errorCode;
		const region = ranked.routes[result.attempts - 1]!.region;
		return withRouting(result.response, { tier: "region", region, attempts: attempts + result.attempts, classification });
	} catch (err) {
		if (err instanceof ApiError) {
			const tried = Math.min(maxAttempts, ranked.routes.length);
			throw new ApiError(err.status, err.type, err.code, err.message, err.param, { ...err.headers, "x-backhaul-attempts": String(attempts + tried) });
		}
		throw err;
	} finally {
		info.attempts.push(...regionLog);
	}
}

async function edgeResponse(result: unknown, req: GenerationRequest): Promise<Response> {
	const created = Math.floor(Date.now() / 1000);
	if (req.stream) {
		if (!(result instanceof ReadableStream)) throw new Error("Workers AI returned no stream");
		const source = await withFirstChunk(result as ReadableStream<Uint8Array>);
		return new Response(toOpenAiStream(source, req.model, created, req.api), {
			headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
		});
	}
	return Response.json(req.api === "chat" ? toChatCompletion(result, req.model, created) : toTextCompletion(result, req.model, created));
}

function withRouting(
	response: Response,
	r: { tier: "edge" | "region"; region: string; attempts: number; classification: Classification },
): Response {
	// Every response here was built by this Worker (never a fetch's, whose
	// headers are immutable), so its headers can be set in place.
	const headers = response.headers;
	headers.set("x-backhaul-tier", r.tier);
	headers.set("x-backhaul-region", r.region);
	headers.set("x-backhaul-attempts", String(r.attempts));
	headers.set("x-backhaul-reason", r.classification.reason);
	return response;
}
