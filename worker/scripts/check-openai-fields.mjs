#!/usr/bin/env node
// The OpenAI field audit's drift check, Node SDK side: every request field
// of chat completions and legacy completions in the pinned `openai` npm
// package (read from its .d.ts with the TypeScript compiler) must have a row
// in docs/openai-compatibility.md, and the doc must name the package's
// version (a new version is a new audit). With `--python FILE` (the Python
// SDK's fields, from scripts/check-openai-fields.py --json-out FILE) it also
// fails on a row that neither SDK sends any more.
// Usage: node scripts/check-openai-fields.mjs [--python FILE] [--list]
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { docFields, docMentionsVersion } from "./openai-doc.mjs";

const here = dirname(fileURLToPath(import.meta.url));
// The package's exports hide package.json and the .d.ts paths: read them where npm put them.
const pkgDir = join(here, "../node_modules/openai");
const version = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8")).version;

/** The property names of the params interfaces (their own members and the ones they extend). */
function fields(file, names) {
	// The one file alone: its interfaces extend each other there, and only their members' names are read.
	const program = ts.createProgram([file], { noEmit: true, noLib: true, noResolve: true, types: [] });
	const checker = program.getTypeChecker();
	const source = program.getSourceFile(file);
	const out = new Set();
	ts.forEachChild(source, (node) => {
		if (ts.isInterfaceDeclaration(node) && names.includes(node.name.text)) {
			for (const p of checker.getPropertiesOfType(checker.getTypeAtLocation(node))) out.add(p.getName());
		}
	});
	if (out.size === 0) throw new Error(`no ${names.join(", ")} in ${file}`);
	return out;
}

const sdk = {
	chat: fields(join(pkgDir, "resources/chat/completions/completions.d.ts"), ["ChatCompletionCreateParamsNonStreaming", "ChatCompletionCreateParamsStreaming"]),
	completions: fields(join(pkgDir, "resources/completions.d.ts"), ["CompletionCreateParamsNonStreaming", "CompletionCreateParamsStreaming"]),
};

const args = process.argv.slice(2);
if (args.includes("--list")) {
	console.log(JSON.stringify({ version, chat: [...sdk.chat].sort(), completions: [...sdk.completions].sort() }, null, 1));
	process.exit(0);
}
const docPath = join(here, "../../docs/openai-compatibility.md");
const doc = readFileSync(docPath, "utf8");
const rows = docFields(doc);
const problems = [];
if (!docMentionsVersion(doc, "Node", version)) problems.push(`the doc does not say it was audited against openai (Node) ${version}: audit the new version's fields, then update that line`);
for (const api of ["chat", "completions"]) {
	for (const f of sdk[api]) if (!rows[api].has(f)) problems.push(`${api}: the Node SDK sends '${f}', which has no row in the doc`);
}
const pyAt = args.indexOf("--python");
if (pyAt >= 0) {
	const py = JSON.parse(readFileSync(args[pyAt + 1], "utf8"));
	for (const api of ["chat", "completions"]) {
		const known = new Set([...sdk[api], ...py[api]]);
		for (const f of rows[api]) if (!known.has(f)) problems.push(`${api}: the doc has a row for '${f}', which neither SDK sends (move it to the table of fields outside the SDKs, or remove it)`);
	}
}
if (problems.length > 0) {
	console.error(`${docPath}:\n  ${problems.join("\n  ")}`);
	process.exit(1);
}
console.log(`openai (Node) ${version}: ${sdk.chat.size} chat and ${sdk.completions.size} completions fields, each in the doc`);
