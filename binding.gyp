{
  # prebuildify drives node-gyp; this target only hands the build to the CMake project
  # (scripts/build.js), so the source list lives in CMakeLists.txt alone.
  "targets": [
    {
      "target_name": "moe_kernels",
      "type": "none",
      "actions": [
        {
          "action_name": "cmake_build",
          "inputs": ["CMakeLists.txt"],
          "outputs": ["<(PRODUCT_DIR)/moe_kernels.node"],
          "action": ["node", "scripts/build.js", "--out", "<(PRODUCT_DIR)"]
        }
      ]
    }
  ]
}
