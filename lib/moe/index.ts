// The moe family: the router GEMM and the dense SwiGLU.
export { MAX_ROUTER_EXPERTS, routerLogits, swiglu, type RouterLogitsOptions, type SwigluOptions } from './ops';
