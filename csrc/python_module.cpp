// An empty Python extension module: `import rnnext._C` loads the op library, whose static initializers run
// the TORCH_LIBRARY registrations. Only the Python build (setup.py) compiles this file; CMake builds the same
// op library without Python for libtorch deployments.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
