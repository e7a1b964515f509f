// Validates Kubernetes objects against the API's OpenAPI schemas (npm kubernetes-models and
// @kubernetes-models/prometheus-operator: types, required fields, enums). Reads a JSON array of
// objects on stdin (test_deploy.py converts the YAML); prints one line per object; exits 1 if any
// is invalid or of a kind it has no schema for.
import { readFileSync } from "node:fs";

const docs = JSON.parse(readFileSync(0, "utf8"));
const modulePath = (apiVersion, kind) =>
  apiVersion === "monitoring.coreos.com/v1"
    ? `@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/${kind}`
    : `kubernetes-models/${apiVersion}/${kind}`;  // "v1" is the core group

let invalid = 0;
for (const doc of docs) {
  const name = `${doc.kind} ${doc.metadata?.name}`;
  let Model;
  try {
    Model = (await import(modulePath(doc.apiVersion, doc.kind)))[doc.kind];
  } catch (e) {
    invalid++;
    console.log(`UNKNOWN ${name}: no schema for ${doc.apiVersion}/${doc.kind}`);
    continue;
  }
  try {
    new Model(doc).validate();
    console.log(`valid ${name}`);
  } catch (e) {
    invalid++;
    console.log(`INVALID ${name}: ${e.message}`);
  }
}
process.exit(invalid ? 1 : 0);
