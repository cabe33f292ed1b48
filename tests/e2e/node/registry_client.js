// End-to-end client: drives agentrt.registry.v1.AgentRegistry from Node.js with the
// committed .proto files, and decodes the google.rpc rich error details of a refused call.
// Usage: node registry_client.js <host:port> <token> <protos dir> <googleapis protos dir>
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const [addr, token, protosDir, googleDir] = process.argv.slice(2);

const definition = protoLoader.loadSync(
  path.join(protosDir, 'agentrt/registry/v1/registry.proto'),
  { includeDirs: [protosDir], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true },
);
const registryPkg = grpc.loadPackageDefinition(definition).agentrt.registry.v1;
const client = new registryPkg.AgentRegistry(addr, grpc.credentials.createInsecure());

const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) =>
  target.startsWith('google/protobuf/') ? path.join(path.dirname(require.resolve('protobufjs')), target) : path.join(googleDir, target);
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
const Status = rpcRoot.lookupType('google.rpc.Status');

function metadata() {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${token}`);
  md.set('x-actor', 'node-client');
  return md;
}

function call(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata(), { deadline: Date.now() + 5000 }, (err, reply) =>
      err ? reject(err) : resolve(reply));
  });
}

function richDetails(err) {
  const raw = err.metadata.get('grpc-status-details-bin')[0];
  const status = Status.decode(raw);
  const out = { code: status.code, message: status.message, reason: null, violations: [] };
  for (const any of status.details) {
    const typeName = any.type_url.split('/').pop();
    const decoded = rpcRoot.lookupType(typeName).decode(any.value);
    if (typeName === 'google.rpc.ErrorInfo') out.reason = decoded.reason;
    if (typeName === 'google.rpc.BadRequest') {
      out.violations = decoded.fieldViolations.map((v) => ({ field: v.field, description: v.description }));
    }
  }
  return out;
}

async function main() {
  const result = {};
  const spec = {
    name: 'Node agent',
    template_id: 'simple-test',
    template_config: { fields: { response_prefix: { stringValue: 'node> ' } } },
    toolsets: ['custom'],
  };
  const created = await call('CreateAgent', { agent_id: 'node-1', spec });
  result.created = { id: created.agent.id, version: created.agent.version, status: created.agent.status };
  const updated = await call('UpdateAgent', {
    agent_id: 'node-1',
    spec: { description: 'updated from node' },
    update_mask: { paths: ['description'] },
    expected_version: 1,
  });
  result.updated = { version: updated.agent.version, description: updated.agent.spec.description };
  const got = await call('GetAgent', { agent_id: 'node-1' });
  result.got = {
    name: got.agent.spec.name,
    prefix: got.agent.spec.template_config.fields.response_prefix.stringValue,
    created_by: got.agent.created_by,
  };
  const listed = await call('ListAgents', { page_size: 10 });
  result.listed = listed.agents.map((a) => a.id);
  const history = await call('ListAgentEvents', { agent_id: 'node-1' });
  result.history = history.events.map((e) => [e.version, e.type, e.actor]);
  try {
    await call('CreateAgent', { agent_id: 'node-2', spec: { name: ' ', template_id: 'no-such-template' } });
    result.refused = null;
  } catch (err) {
    result.refused = { grpc_code: err.code, ...richDetails(err) };
  }
  try {
    await call('UpdateAgent', { agent_id: 'node-1', spec: { description: 'stale' }, expected_version: 1 });
    result.stale = null;
  } catch (err) {
    result.stale = { grpc_code: err.code, ...richDetails(err) };
  }
  process.stdout.write(JSON.stringify(result));
  client.close();
}

main().catch((err) => {
  process.stderr.write(`client failed: ${err.stack || err}\n`);
  process.exit(1);
});
