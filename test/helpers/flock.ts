/**
 * An independent holder of a flock(2) lock for tests of saekit's checkpoint-folder lock: a python3
 * process that takes fcntl.flock(LOCK_EX) on a file, writes a holder record into it and waits
 * until it is killed.
 */
import { spawn, spawnSync } from 'node:child_process';

/** Whether python3 with fcntl is here (Linux CI has it). */
export const canFlock: boolean = process.platform === 'linux' && spawnSync('python3', ['-c', 'import fcntl'], { stdio: 'ignore' }).status === 0;

export interface FlockHolder {
  pid: number;
  /** SIGKILLs the holder and resolves once it has exited (the system then drops its lock). */
  kill(): Promise<void>;
}

/** Resolves once the python3 holder has the lock on `file` and has written `{pid, host, started}` into it. */
export async function holdFlock(file: string, host: string, started: string): Promise<FlockHolder> {
  const py = [
    'import fcntl, json, os, sys',
    "f = open(sys.argv[1], 'a+')",
    'fcntl.flock(f, fcntl.LOCK_EX)',
    'f.seek(0); f.truncate()',
    "f.write(json.dumps({'pid': os.getpid(), 'host': sys.argv[2], 'started': sys.argv[3]})); f.flush()",
    "print('locked', flush=True)",
    'sys.stdin.read()',
  ].join('\n');
  const child = spawn('python3', ['-c', py, file, host, started], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', (d: Buffer) => (d.toString().startsWith('locked') ? resolve() : reject(new Error(`python3 said ${d.toString()}`))));
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`python3 exited (${String(code)}) before taking the lock on ${file}`)));
  });
  return {
    pid: child.pid!,
    kill: async () => {
      child.kill('SIGKILL');
      await exited;
    },
  };
}
