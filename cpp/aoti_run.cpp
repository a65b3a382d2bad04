// Loads an AOTInductor package of a model holding rnnext modules (scripts/aoti_export.py) and runs it from C++,
// without Python: the package's rnnext ops are found through the dispatcher in librnnext_ops.so. Compares the
// outputs with Python's (expected.pt) and exits non-zero on a mismatch.
//
//   rnnext_aoti_run DIR     (DIR holds model.pt2, inputs.pt, expected.pt)
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/serialize.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace {

std::vector<at::Tensor> load_tensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const c10::IValue v = torch::pickle_load(data);
  std::vector<at::Tensor> out;
  for (const c10::IValue& e : v.toListRef()) out.push_back(e.toTensor());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: rnnext_aoti_run DIR (with model.pt2, inputs.pt, expected.pt)\n";
    return 2;
  }
  const std::string dir = argv[1];
  try {
    const std::vector<at::Tensor> inputs = load_tensors(dir + "/inputs.pt");
    const std::vector<at::Tensor> expected = load_tensors(dir + "/expected.pt");
    torch::inductor::AOTIModelPackageLoader loader(dir + "/model.pt2");
    const std::vector<at::Tensor> outputs = loader.run(inputs);
    if (outputs.size() != expected.size()) {
      std::cerr << "FAIL: " << outputs.size() << " outputs, Python gave " << expected.size() << "\n";
      return 1;
    }
    double worst = 0;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (outputs[i].sizes() != expected[i].sizes()) {
        std::cerr << "FAIL: output " << i << " has shape " << outputs[i].sizes() << ", Python's "
                  << expected[i].sizes() << "\n";
        return 1;
      }
      const double diff = (outputs[i] - expected[i]).abs().max().item<double>();
      std::cout << "output " << i << " " << outputs[i].sizes() << ": max |C++ - Python| = " << diff << "\n";
      worst = std::max(worst, diff);
    }
    if (!(worst <= 1e-5)) {
      std::cerr << "FAIL: outputs differ from Python's by " << worst << "\n";
      return 1;
    }
    std::cout << "OK: " << outputs.size() << " outputs equal Python's (max difference " << worst << ")\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "FAIL: " << e.what() << "\n";
    return 1;
  }
}
