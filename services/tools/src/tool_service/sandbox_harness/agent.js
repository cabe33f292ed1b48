// Sandbox harness: calls a custom agent's JavaScript entry point once, inside the sandbox.
// Protocol (JSON lines, untrusted on the other side): the service writes
// {"messages": [...], "agent": {...}} to the command descriptor first, then one
// {"type": "tool_result", "id": ..., "result": {...}} per tool call; the harness writes
// progress, tool_call, and finally result or error to the report descriptor. What the
// code prints to stdout streams as progress.
'use strict';
const fs = require('fs');
// Writes to the stdout and stderr pipes block, as they would in a terminal: a program that
// never yields would otherwise queue its output in memory instead of sending it (and the
// output limit could not see it).
for (const stream of [process.stdout, process.stderr]) {
  if (stream._handle && typeof stream._handle.setBlocking === 'function') stream._handle.setBlocking(true);
}
const vm = require('vm');

const MAX_REPLY_CHARS = 1000000;
const reportFd = Number(process.env.AGENTRT_REPORT_FD);
const commandFd = Number(process.env.AGENTRT_COMMAND_FD);
const code = process.env.AGENTRT_CODE;
const entry = process.env.AGENTRT_ENTRY;
for (const key of ['AGENTRT_REPORT_FD', 'AGENTRT_COMMAND_FD', 'AGENTRT_CODE', 'AGENTRT_ENTRY', 'AGENTRT_OUTPUT']) {
  delete process.env[key];
}

function send(message) {
  fs.writeSync(reportFd, JSON.stringify(message) + '\n');
}

// Lines from the command descriptor, read synchronously (a tool call waits for its answer).
let pending = '';
function nextLine() {
  const buffer = Buffer.alloc(65536);
  for (;;) {
    const end = pending.indexOf('\n');
    if (end >= 0) {
      const line = pending.slice(0, end);
      pending = pending.slice(end + 1);
      return line;
    }
    let read;
    try {
      read = fs.readSync(commandFd, buffer, 0, buffer.length, null);
    } catch (e) {
      if (e.code === 'EAGAIN') continue;
      throw e;
    }
    if (read === 0) throw new Error('the service stopped answering tool calls');
    pending += buffer.toString('utf8', 0, read);
  }
}

function replyOf(value) {
  if (typeof value === 'string') return value.slice(0, MAX_REPLY_CHARS);
  if (value && typeof value === 'object' && typeof value.content === 'string') {
    return value.content.slice(0, MAX_REPLY_CHARS);
  }
  if (value === undefined || value === null) return '';
  return JSON.stringify(value).slice(0, MAX_REPLY_CHARS);
}

function ownStack(error) {
  const text = error && error.stack ? String(error.stack) : String(error);
  return text.split('\n').filter((l) => !l.includes('agent.js') && !l.includes('node:internal')).join('\n').slice(-4000);
}

function finish(message) {
  send({ type: 'usage', max_rss_kb: process.resourceUsage().maxRSS });
  send(message);
  process.exitCode = message.type === 'result' ? 0 : 1;
}

async function main() {
  const start = JSON.parse(nextLine());
  const facts = start.agent || {};
  let calls = 0;
  const agent = {
    id: facts.id || '',
    name: facts.name || '',
    version: facts.version || 0,
    config: facts.config || {},
    progress(text) {
      send({ type: 'progress', text: String(text) });
    },
    async callTool(name, args) {
      if (typeof name !== 'string' || !name) throw new TypeError('tool name must be a non-empty string');
      calls += 1;
      const id = String(calls);
      send({ type: 'tool_call', id, name, arguments: args || {} });
      const answer = JSON.parse(nextLine());
      if (answer.id !== id) throw new Error('tool result out of order');
      return answer.result || {};
    },
  };
  let fn;
  try {
    const source = fs.readFileSync(code, 'utf8');
    const params = ['exports', 'require', 'module', '__filename', '__dirname'];
    vm.compileFunction(source, params, { filename: code }); // a SyntaxError names its line
    const Module = require('module');
    const loaded = new Module(code, module);
    loaded.filename = code;
    // A top-level function declaration is not exported: a last line exports it.
    const shim = `\n;try { if (typeof ${entry} === 'function') module.exports.__agentrt_entry = ${entry}; } catch (e) {}\n`;
    loaded._compile(source + shim, code);
    const exported = loaded.exports;
    fn = exported && typeof exported[entry] === 'function' ? exported[entry] : exported && exported.__agentrt_entry;
  } catch (e) {
    const invalid = e instanceof SyntaxError;
    return finish({ type: 'error', code: invalid ? 'INVALID_CODE' : 'CODE_ERROR', message: ownStack(e) });
  }
  if (typeof fn !== 'function') {
    return finish({ type: 'error', code: 'INVALID_CODE', message: `no function ${entry} in the code` });
  }
  try {
    const value = await fn(start.messages || [], agent);
    return finish({ type: 'result', reply: replyOf(value) });
  } catch (e) {
    return finish({ type: 'error', code: 'CODE_ERROR', message: ownStack(e) });
  }
}

main();
