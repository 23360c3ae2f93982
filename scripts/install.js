#!/usr/bin/env node
// npm install hook: use a prebuilt addon when one loads, otherwise build from source.
// `npm install --build-from-source` (npm_config_build_from_source) always builds.
'use strict';
const path = require('node:path');
const root = path.resolve(__dirname, '..');
const fromSource = /^(1|true)$/i.test(process.env.npm_config_build_from_source || '');
if (!fromSource) {
  try {
    require('node-gyp-build')(root);
    process.exit(0);
  } catch {
    // no prebuild fits this platform: build below
  }
}
require('./build.js');
