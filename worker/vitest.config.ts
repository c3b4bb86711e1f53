import { cloudflareTest } from "@cloudflare/vitest-plugin";
import { defineConfig } from "vitest/config";
import { TEST_MODEL_OWNERS, TEST_PUBLISHERS } from "./test/keys";

// Tests run inside workerd (Miniflare) with the `local` environment of
// wrangler.jsonc: the real Durable Object, rate limiter and vars. Regions are
// a real HTTP server on 127.0.0.1 started by test/upstream-server.ts.
export default defineConfig({
	plugins: [
		cloudflareTest(({ inject }) => ({
			wrangler: { configPath: "./wrangler.jsonc", environment: "local" },
			miniflare: {
				bindings: {
					// Test keys only (test/keys.ts); tests of other publisher configurations call the handler with their own env.
					BACKHAUL_PUBLISHERS: JSON.stringify(TEST_PUBLISHERS),
					BACKHAUL_MODEL_OWNERS: JSON.stringify(TEST_MODEL_OWNERS),
					// Whatever a local .dev.vars says (the demo writes one), the suite
					// runs with an open API and the vars it asserts on. Tests of keys,
					// the closed default and the Access token call the Worker with their own env.
					BACKHAUL_API_KEYS: "",
					ALLOW_ANONYMOUS: "true",
					ALLOW_ANONYMOUS_ROUTE_HINT: "false",
					MAX_TOKENS_LIMIT: "4096",
					MAX_UPSTREAM_BODY_BYTES: "4194304",
					CF_ACCESS_CLIENT_ID: "",
					CF_ACCESS_CLIENT_SECRET: "",
					DEFAULT_LOCATION: "",
					TRUST_LOCATION_HEADER: "false",
					ROUTE_CACHE_TTL_MS: "5000",
					// The response cache is off unless a test asks (x-backhaul-cache-ttl, or its own CACHE_MODELS).
					CACHE_TTL_SECONDS: "0",
					CACHE_MODELS: "{}",
					// The suite's keys publish hundreds of routes; the cap's edges are tested with their own key and a cap of 3.
					MAX_ROUTES_PER_PUBLISHER: "5000",
					MAX_BODY_BYTES: "1048576",
					TEST_UPSTREAM: `http://127.0.0.1:${inject<number>("upstreamPort")}`,
					TEST_REFUSED: `http://127.0.0.1:${inject<number>("refusedPort")}`,
				},
			},
		})),
	],
	test: {
		globalSetup: ["./test/upstream-server.ts"],
		reporters: ["default", "./test/summary-reporter.ts"],
		include: ["test/**/*.test.ts"],
		testTimeout: 20_000,
	},
});
