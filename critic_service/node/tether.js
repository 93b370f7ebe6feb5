// A Playwright webServer command, tied to the runner that started it: `node tether.js RUNNER_PID` runs the command in
// $RELOOK_TETHERED (through the shell, in this process group: the group Playwright starts detached and kills as a
// whole when it stops the server) and kills that group as soon as RUNNER_PID is gone. A runner killed mid-run never
// stops its web server itself; without this the server (e.g. `npx serve`) outlives it.
const { spawn } = require('child_process')

const runner = Number(process.argv[2])
const command = process.env.RELOOK_TETHERED
if (!runner || !command) {
  console.error('usage: RELOOK_TETHERED="<command>" node tether.js RUNNER_PID')
  process.exit(2)
}
const child = spawn(command, { shell: true, stdio: 'inherit' })
const stopAll = () => process.kill(0, 'SIGKILL') // the whole group: the server, its children, this process
const alive = (pid) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return e.code === 'EPERM'
  }
}
setInterval(() => alive(runner) || stopAll(), 250)
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, stopAll)
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)))
