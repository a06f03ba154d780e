// Validates Prometheus Operator objects (a JSON array on stdin) against the OpenAPI schemas
// of their CRDs, as packaged by @kubernetes-models/prometheus-operator (installed into
// .tools/ by scripts/chart-check.sh; KMIRROR_CRD_MODELS names its directory). The API
// server would refuse what fails here (patterns, types, required fields); like the API
// server, unknown fields are not errors (a structural CRD prunes them).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const models = process.env.KMIRROR_CRD_MODELS;
if (!models) {
  console.error("KMIRROR_CRD_MODELS is not set");
  process.exit(2);
}
const v1 = await import(pathToFileURL(join(models, "monitoring.coreos.com", "v1", "index.js")).href);
const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const obj of objects) {
  const Model = v1[obj.kind];
  if (!Model || obj.apiVersion !== "monitoring.coreos.com/v1") {
    console.log(`${obj.apiVersion} ${obj.kind}: no schema known`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
  } catch (e) {
    console.log(`${obj.kind} ${obj.metadata?.name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
