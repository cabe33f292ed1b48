// Sandbox harness: preloaded (node --require) before a `run_code` JavaScript program.
// Runs INSIDE the sandbox. When the program exits, the regular files it left in the
// output folder are written to the report descriptor as JSON lines
// {"type": "file", "path": ..., "data": <base64>}; the service treats them as untrusted.
'use strict';
const fs = require('fs');
// Writes to the stdout and stderr pipes block, as they would in a terminal: a program that
// never yields would otherwise queue its output in memory instead of sending it (and the
// output limit could not see it).
for (const stream of [process.stdout, process.stderr]) {
  if (stream._handle && typeof stream._handle.setBlocking === 'function') stream._handle.setBlocking(true);
}
const path = require('path');

const MAX_FILES = 100;
const reportFd = Number(process.env.AGENTRT_REPORT_FD);
const folder = process.env.AGENTRT_OUTPUT;
delete process.env.AGENTRT_REPORT_FD;
delete process.env.AGENTRT_CODE;

function walk(dir, found) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) walk(full, found);
    else if (entry.isFile()) found.push(full);
  }
  return found;
}

process.on('exit', () => {
  try {
    fs.writeSync(reportFd, JSON.stringify({ type: 'usage', max_rss_kb: process.resourceUsage().maxRSS }) + '\n');
    let sent = 0;
    for (const file of walk(folder, [])) {
      const line = sent >= MAX_FILES
        ? { type: 'dropped' }
        : { type: 'file', path: path.relative(folder, file), data: fs.readFileSync(file).toString('base64') };
      fs.writeSync(reportFd, JSON.stringify(line) + '\n');
      sent += 1;
    }
  } catch (e) {
    process.stderr.write(`output folder not reported: ${e.message}\n`);
  }
});
