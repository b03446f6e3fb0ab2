# Builds build/Release/pants_native.node, the native transport (see native/).
#   node /usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js rebuild
# (node-gyp takes Node's headers from `npm config get nodedir`, /usr here.)
{
  "targets": [
    {
      "target_name": "pants_native",
      "sources": [
        "native/addon.c",
        "native/conn.c",
        "native/framing.c",
        "native/malloc-tune.c",
        "native/read.c",
        "native/server.c",
        "native/util.c",
        "native/write.c"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-std=c11", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"],
      "cflags!": ["-O3"],
      "xcode_settings": {
        "GCC_C_LANGUAGE_STANDARD": "c11",
        "OTHER_CFLAGS": ["-O2", "-Wall", "-Wextra"]
      },
      "conditions": [
        ["OS=='linux'", { "defines": ["_GNU_SOURCE"] }]
      ]
    }
  ]
}
