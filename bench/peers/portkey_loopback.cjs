// Preloaded into the Portkey gateway by bench/compare.py (node --require this file).
//
// The gateway's start script takes only --port and listens on every interface; a benchmark
// server must stay on the loopback interface, so a listen() without a host gets 127.0.0.1.
"use strict";

const net = require("net");

const HOST = process.env.BENCH_LISTEN_HOST || "127.0.0.1";
const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" || (typeof args[0] === "string" && /^\d+$/.test(args[0]))) {
    // listen(port[, host][, backlog][, callback]): a missing or undefined host means "all".
    if (args.length < 2 || typeof args[1] === "function" || args[1] === undefined) {
      args.splice(1, args.length >= 2 && args[1] === undefined ? 1 : 0, HOST);
    }
  } else if (args[0] && typeof args[0] === "object" && !(args[0] instanceof net.Server)
             && args[0].port !== undefined && !args[0].host && !args[0].path) {
    args[0] = { ...args[0], host: HOST };
  }
  return listen.apply(this, args);
};
