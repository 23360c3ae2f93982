import { cudaUnavailableReason } from '../lib';

export default function setup(): void {
  const reason = cudaUnavailableReason();
  if (reason === undefined) console.log('[@moe/kernels] CUDA cases run on cuda:0 (and the CPU reference)');
  else console.log(`[@moe/kernels] CUDA cases are skipped: ${reason}. The CPU backend cases run.`);
}
