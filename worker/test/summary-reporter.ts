/**
 * Ends a run with one plain line, `worker: N passed, N failed, N skipped`,
 * which CI logs and scripts can read whatever the runner's own format.
 */
import type { Reporter, TestModule } from "vitest/node";

export default class SummaryReporter implements Reporter {
	onTestRunEnd(testModules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<unknown>): void {
		let passed = 0;
		let failed = unhandledErrors.length;
		let skipped = 0;
		for (const mod of testModules) {
			if (mod.state() === "failed" && [...mod.children.allTests()].length === 0) failed++;
			for (const test of mod.children.allTests()) {
				const state = test.result().state;
				if (state === "passed") passed++;
				else if (state === "failed") failed++;
				else skipped++;
			}
		}
		process.stdout.write(`worker: ${passed} passed, ${failed} failed, ${skipped} skipped\n`);
	}
}
