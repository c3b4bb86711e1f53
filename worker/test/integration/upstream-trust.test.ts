/**
 * The Worker → region side: the credential the Worker presents, and how far
 * it trusts what a region answers (redirects, body size, content types,
 * headers). Regions are test/upstream-server.ts, which, like
 * backhaul-inference, refuses a request without the route's bearer token.
 */
import { describe, expect, it, vi } from "vitest";
import { chat, sseContent, TEST_UPSTREAM_TOKEN, uid, upstreamCount } from "../helpers";
import { chatBody, chatWith, deploy, errorOf, far, HUGE_BYTES, LONDON, near, upstreamHeaders, upstreamSent } from "../client-helpers";

describe("the Worker's credential to regions", () => {
	it("sends the route's own token, and nothing of the client's request but its body", async () => {
		const clientKey = uid("client-key-");
		const { model, ids } = await deploy([near("ok")]);
		for (const stream of [false, true]) {
			const res = await chatWith(chatBody(model, { stream }), { BACKHAUL_API_KEYS: clientKey }, {
				authorization: `Bearer ${clientKey}`,
				cookie: "session=client-cookie",
				"x-client-secret-header": "client-only",
			});
			expect(res.status).toBe(200);
			await res.text();
		}
		const seen = await upstreamHeaders(ids[0]!);
		expect(seen).toHaveLength(2);
		for (const h of seen) {
			expect(h.authorization).toBe(`Bearer ${TEST_UPSTREAM_TOKEN}`);
			expect(JSON.stringify(h)).not.toContain(clientKey);
			expect(h.cookie).toBeUndefined();
			expect(h["x-client-secret-header"]).toBeUndefined();
			// No Access token configured in the suite: none sent.
			expect(h["cf-access-client-id"]).toBeUndefined();
			expect(h["cf-access-client-secret"]).toBeUndefined();
		}
	});

	it("sends the Cloudflare Access service token when both secrets are set, and only then", async () => {
		const { model, ids } = await deploy([near("ok")]);
		const access = { CF_ACCESS_CLIENT_ID: "access-id.access", CF_ACCESS_CLIENT_SECRET: "access-secret-value" };
		for (const overrides of [access, { CF_ACCESS_CLIENT_ID: "access-id.access" }, { CF_ACCESS_CLIENT_SECRET: "access-secret-value" }, {}]) {
			const res = await chatWith(chatBody(model), overrides);
			expect(res.status).toBe(200);
			await res.body?.cancel();
		}
		const [both, idOnly, secretOnly, none] = await upstreamHeaders(ids[0]!);
		expect(both).toMatchObject({ "cf-access-client-id": "access-id.access", "cf-access-client-secret": "access-secret-value", authorization: `Bearer ${TEST_UPSTREAM_TOKEN}` });
		for (const h of [idOnly, secretOnly, none]) {
			expect(h!["cf-access-client-id"]).toBeUndefined();
			expect(h!["cf-access-client-secret"]).toBeUndefined();
			expect(h!.authorization).toBe(`Bearer ${TEST_UPSTREAM_TOKEN}`);
		}
	});

	it("fails over when a region refuses the Worker's credential (401, or 403 from Access), and logs it without the token", async () => {
		const wrongToken = "a-token-this-region-does-not-hold";
		const { model, ids } = await deploy([near("ok", { upstreamToken: wrongToken }), { scenario: "forbidden", latitude: 52, longitude: 0 }, far("ok")]);
		const warn = vi.spyOn(console, "warn");
		let logged: unknown[][];
		try {
			const res = await chatWith(chatBody(model), { CF_ACCESS_CLIENT_ID: "id.access", CF_ACCESS_CLIENT_SECRET: "access-secret-value" }, {}, LONDON);
			expect(res.status).toBe(200);
			expect(res.headers.get("x-backhaul-region")).toBe("r2-ok");
			expect(res.headers.get("x-backhaul-attempts")).toBe("3");
			await res.body?.cancel();
			logged = warn.mock.calls.filter((c) => String(c[0]).includes("refused the Worker's credential"));
		} finally {
			warn.mockRestore();
		}
		expect(logged.map((c) => (c[1] as { status: number }).status).sort()).toEqual([401, 403]);
		expect((logged[0]![1] as { upstreamTokenSha256: string }).upstreamTokenSha256).toMatch(/^[0-9a-f]{16}$/);
		const text = JSON.stringify(logged);
		for (const secret of [wrongToken, TEST_UPSTREAM_TOKEN, "access-secret-value"]) expect(text).not.toContain(secret);
		// The mismatched route's region did get (and refuse) the request, with that route's token.
		expect((await upstreamHeaders(ids[0]!))[0]!.authorization).toBe("Bearer a-token-this-region-does-not-hold");
	});

	it("never hands a region's 401 to the client: every region refusing is a 503", async () => {
		const { model } = await deploy([near("ok", { upstreamToken: "a-token-no-region-holds-0001" })]);
		const res = await chat(chatBody(model));
		expect(res.status).toBe(503);
		const err = await errorOf(res);
		expect(err.code).toBe("regions_failed");
		expect(err.message).toContain("refused the Worker's credential");
		expect(err.message).not.toContain("a-token-no-region-holds-0001");
	});
});

describe("what the Worker accepts from a region", () => {
	it("does not follow a region's redirect: the attempt fails over", async () => {
		const { model, ids } = await deploy([near("redirect"), far("ok")]);
		for (const stream of [false, true]) {
			const res = await chat(chatBody(model, { stream }), { cf: LONDON });
			expect(res.status).toBe(200);
			expect(res.headers.get("x-backhaul-region")).toBe("r1-ok");
			expect(res.headers.get("x-backhaul-attempts")).toBe("2");
			await res.text();
		}
		expect(await upstreamCount(ids[0]!)).toBe(2);
		expect(await upstreamCount(`${ids[0]}-target`)).toBe(0);
	});

	it("fails over from a body over MAX_UPSTREAM_BODY_BYTES without reading it all", async () => {
		for (const scenario of ["huge", "hugedeclared"]) {
			const { model, ids } = await deploy([near(scenario), far("ok")]);
			const res = await chat(chatBody(model), { cf: LONDON });
			expect(res.status, scenario).toBe(200);
			expect(res.headers.get("x-backhaul-region"), scenario).toBe("r1-ok");
			await res.body?.cancel();
			const sent = await upstreamSent(ids[0]!);
			expect(sent.finished, scenario).toBe(false);
			// The 4 MiB cap plus what the sockets and the runtime buffer (under 20 MiB here): far from the whole 128 MiB.
			expect(sent.written, scenario).toBeLessThan(HUGE_BYTES / 2);
		}
	});

	it("honours a smaller MAX_UPSTREAM_BODY_BYTES", async () => {
		const { model } = await deploy([near("ok"), far("ok")]);
		// The simulated completion is about 200 bytes.
		const small = await chatWith(chatBody(model), { MAX_UPSTREAM_BODY_BYTES: "64" }, {}, LONDON);
		expect(small.status).toBe(502);
		expect((await errorOf(small)).code).toBe("bad_upstream_response");
		const enough = await chatWith(chatBody(model), { MAX_UPSTREAM_BODY_BYTES: "4096" }, {}, LONDON);
		expect(enough.status).toBe(200);
		await enough.body?.cancel();
	});

	it("fails over from a 2xx that is not JSON, or a stream that is not text/event-stream", async () => {
		const cases = [
			{ scenario: "html", stream: false },
			{ scenario: "html", stream: true },
			{ scenario: "jsonstream", stream: true },
		];
		for (const { scenario, stream } of cases) {
			const { model, ids } = await deploy([near(scenario), far("ok")]);
			const res = await chat(chatBody(model, { stream }), { cf: LONDON });
			const label = `${scenario} stream=${stream}`;
			expect(res.status, label).toBe(200);
			expect(res.headers.get("x-backhaul-region"), label).toBe("r1-ok");
			expect(res.headers.get("x-backhaul-attempts"), label).toBe("2");
			const text = await res.text();
			expect(text, label).not.toContain("<html>");
			expect(text, label).toContain(`hello from ${ids[1]}`);
		}
	});

	it("answers 502 bad_upstream_response when every region answered with something it does not accept", async () => {
		const { model } = await deploy([near("redirect"), { scenario: "html", latitude: 52, longitude: 0 }, far("huge")]);
		const res = await chat(chatBody(model), { cf: LONDON });
		expect(res.status).toBe(502);
		expect(res.headers.get("x-backhaul-attempts")).toBe("3");
		expect(res.headers.get("content-type")).toBe("application/json");
		expect(res.headers.get("x-content-type-options")).toBe("nosniff");
		const err = await errorOf(res);
		expect(err).toMatchObject({ type: "server_error", code: "bad_upstream_response" });
		expect(err.message).toContain("redirect");
		expect(err.message).toContain("text/html");
		expect(err.message).toContain("over 4194304 bytes");
	});

	it("a mix of bad answers and unavailable regions stays a 503", async () => {
		const { model } = await deploy([near("html"), far("status503")]);
		const res = await chat(chatBody(model), { cf: LONDON });
		expect(res.status).toBe(503);
		expect((await errorOf(res)).code).toBe("regions_failed");
	});

	it("passes a region's 4xx through only when it is a JSON error within the cap", async () => {
		for (const scenario of ["htmlerror", "hugeerror"]) {
			const { model, ids } = await deploy([near(scenario), far("ok")]);
			const res = await chat(chatBody(model), { cf: LONDON });
			expect(res.status, scenario).toBe(400);
			expect(res.headers.get("x-backhaul-attempts"), scenario).toBe("1");
			expect(res.headers.get("content-type"), scenario).toBe("application/json");
			const text = await res.text();
			expect(text, scenario).not.toContain("<html>");
			expect(text.length, scenario).toBeLessThan(1000);
			expect((JSON.parse(text) as { error: { code: string } }).error.code, scenario).toBe("upstream_rejected_request");
			if (scenario === "hugeerror") expect((await upstreamSent(ids[0]!)).finished).toBe(false);
		}
		const { model } = await deploy([near("badrequest"), far("ok")]);
		const passed = await chat(chatBody(model), { cf: LONDON });
		expect(passed.status).toBe(400);
		expect(await errorOf(passed)).toMatchObject({ message: "upstream says no", type: "invalid_request_error" });
	});
});

describe("response headers", () => {
	it("passes none of a region's headers, under the Worker's own content-type and request id", async () => {
		const { model, ids } = await deploy([near("leaky")]);
		for (const stream of [false, true]) {
			const res = await chat(chatBody(model, { stream }));
			expect(res.status).toBe(200);
			expect(res.headers.get("content-type")).toBe(stream ? "text/event-stream" : "application/json");
			// The Worker's own id (sent to the region too), not whatever the region answered with.
			expect(res.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
			for (const name of ["set-cookie", "x-powered-by", "access-control-allow-origin"]) expect(res.headers.get(name), name).toBeNull();
			expect(res.headers.get("server")).not.toBe("nginx/1.25");
			const text = await res.text();
			if (stream) expect(sseContent(text)).toBe(`hello from ${ids[0]} bye`);
		}
		// A region's 300-character x-request-id never reaches the client.
		const long = (await deploy([near("longrequestid")])).model;
		const res = await chat(chatBody(long), { headers: { "x-request-id": "client-id-1" } });
		expect(res.status).toBe(200);
		expect(res.headers.get("x-request-id")).toBe("client-id-1");
		await res.body?.cancel();
	});

	it("marks every answer nosniff: success, stream, the Worker's own errors and a region's", async () => {
		const { model } = await deploy([near("ok")]);
		const bad = (await deploy([near("badrequest")])).model;
		const answers = [
			await chat(chatBody(model)),
			await chat(chatBody(model, { stream: true })),
			await chat(chatBody(bad)),
			await chat(chatBody(uid("missing-"))),
			await chat("{nope"),
			await chatWith(chatBody(model), { BACKHAUL_API_KEYS: "", ALLOW_ANONYMOUS: "false" }),
			await chatWith(chatBody(model), { BACKHAUL_API_KEYS: uid("k-") }),
		];
		const { SELF } = await import("cloudflare:test");
		answers.push(await SELF.fetch("https://router.test/health"), await SELF.fetch("https://router.test/v1/models"), await SELF.fetch("https://router.test/nowhere"));
		expect(answers.map((r) => r.status)).toEqual([200, 200, 400, 404, 400, 401, 401, 200, 200, 404]);
		for (const r of answers) {
			expect(r.headers.get("x-content-type-options")).toBe("nosniff");
			await r.body?.cancel();
		}
	});
});
