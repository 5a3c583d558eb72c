// eac_host.cpp: a C++ program that embeds Python and explains an image held in C++ memory.
//
// The example to copy when eac runs inside a C++ application. It
//   1. starts the Python interpreter (pybind11's embedded interpreter), in the
//      environment of the Python named by $EAC_PYTHON (e.g. a virtualenv's
//      bin/python, so its site-packages with eac and onnxruntime are found);
//   2. creates ONE engine: a Classifier from an exported folder, a grid concept
//      source and an Explainer (sessions are created once, here);
//   3. explains one H x W x 3 uint8 RGB image that lives in a std::vector, from
//      two C++ threads at once. The pixels are handed to numpy without a copy
//      (py::array_t over the vector's memory, with a capsule as its base object);
//      main releases the GIL, each thread takes it to call Python, and ONNX
//      Runtime releases it again while the classifier runs, so the threads overlap;
//   4. prints one JSON object on stdout:
//      {"pixels_address": <address of the vector's data>,
//       "numpy_addresses": [<address numpy saw in thread 0>, <in thread 1>],
//       "results": [<Explanation.to_dict() of thread 0>, <of thread 1>],
//       "errors": [null or "<one line>", ...]}
//
// Build (Linux, g++; see tests/engine/test_cpp_host.py, which builds and runs it):
//   g++ -O2 -std=c++17 eac_host.cpp $(python -m pybind11 --includes) \
//       $(python3-config --embed --ldflags) -Wl,-rpath,$(python3-config --prefix)/lib -pthread -o eac_host
// Run:
//   EAC_PYTHON=$(which python) ./eac_host CLASSIFIER_DIR IMAGE.rgb HEIGHT WIDTH [N_SEGMENTS] [EVALUATIONS]
// where IMAGE.rgb holds HEIGHT*WIDTH*3 bytes, row-major RGB (numpy's image.tobytes()).

#include <pybind11/embed.h>
#include <pybind11/numpy.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

constexpr int kThreads = 2;
constexpr int kChannels = 3;
constexpr int kDefaultSegments = 8;
constexpr int kUsageError = 2;

// The Python exception as one line, "<type>: <message>" (what() adds pybind11's traceback on further lines).
// Call with the GIL held.
std::string one_line(const py::error_already_set& e) {
    std::string message = py::str(e.value()).cast<std::string>();
    message = message.substr(0, message.find('\n'));
    return py::str(e.type().attr("__name__")).cast<std::string>() + ": " + message;
}

std::vector<std::uint8_t> read_pixels(const std::string& path, std::size_t expected) {
    std::ifstream in(path, std::ios::binary);
    std::vector<std::uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) {
        throw std::runtime_error("cannot read " + path);
    }
    if (data.size() != expected) {
        throw std::runtime_error(path + ": expected " + std::to_string(expected) + " bytes, got " +
                                 std::to_string(data.size()));
    }
    return data;
}

// A numpy view of the C++ pixels: no copy. The capsule is the array's base object; it owns
// nothing (the vector outlives every array made here), so its destructor does nothing.
py::array_t<std::uint8_t> view_of(std::vector<std::uint8_t>& pixels, py::ssize_t height, py::ssize_t width) {
    py::capsule base(pixels.data(), [](void*) {});
    return py::array_t<std::uint8_t>({height, width, static_cast<py::ssize_t>(kChannels)},
                                     {width * kChannels, static_cast<py::ssize_t>(kChannels), py::ssize_t{1}},
                                     pixels.data(), base);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 5) {
        std::cerr << "usage: eac_host CLASSIFIER_DIR IMAGE.rgb HEIGHT WIDTH [N_SEGMENTS] [EVALUATIONS]\n";
        return kUsageError;
    }
    const std::string classifier_dir = argv[1];
    const py::ssize_t height = std::atol(argv[3]);
    const py::ssize_t width = std::atol(argv[4]);
    const int segments = argc > 5 ? std::atoi(argv[5]) : kDefaultSegments;
    const long evaluations = argc > 6 ? std::atol(argv[6]) : 0;
    if (height < 1 || width < 1 || segments < 1) {
        std::cerr << "eac_host: HEIGHT, WIDTH and N_SEGMENTS must be positive\n";
        return kUsageError;
    }
    std::vector<std::uint8_t> pixels;
    try {
        pixels = read_pixels(argv[2], static_cast<std::size_t>(height * width * kChannels));
    } catch (const std::exception& e) {
        std::cerr << "eac_host: " << e.what() << "\n";
        return kUsageError;
    }

    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    if (const char* python = std::getenv("EAC_PYTHON")) {
        // The interpreter takes its prefix (and a virtualenv's site-packages) from this executable.
        PyConfig_SetBytesString(&config, &config.program_name, python);
    }
    py::scoped_interpreter interpreter{&config};

    std::string output;
    int status = 0;
    {
        // Python objects are created and destroyed with the GIL held (this scope holds it).
        py::object json = py::module_::import("json");
        py::object explainer;
        py::object source;
        try {
            py::object engine = py::module_::import("eac.engine");
            py::object classifier = engine.attr("Classifier").attr("from_folder")(classifier_dir);
            py::dict options;
            if (evaluations > 0) {
                options = py::module_::import("eac.engine.methods").attr("get_method")("eac").attr("budget")(
                    evaluations);
            }
            explainer = engine.attr("Explainer")(classifier, **options);
            source = py::module_::import("eac.engine.sources").attr("make_source")("grid", segments);
        } catch (const py::error_already_set& e) {
            std::cerr << "eac_host: cannot create the engine: " << one_line(e) << "\n";
            return 1;
        }

        std::vector<std::string> results(kThreads);
        std::vector<std::string> errors(kThreads);
        std::vector<std::uintptr_t> seen(kThreads, 0);
        {
            py::gil_scoped_release release;  // let the threads take the GIL
            std::vector<std::thread> threads;
            for (int i = 0; i < kThreads; ++i) {
                threads.emplace_back([&, i] {
                    py::gil_scoped_acquire acquire;
                    try {
                        py::array_t<std::uint8_t> image = view_of(pixels, height, width);
                        seen[i] = reinterpret_cast<std::uintptr_t>(image.data());
                        py::object explanation = explainer.attr("explain")(image, source);
                        results[i] = json.attr("dumps")(explanation.attr("to_dict")()).cast<std::string>();
                    } catch (const py::error_already_set& e) {
                        errors[i] = one_line(e);
                    }
                });
            }
            for (auto& t : threads) {
                t.join();
            }
        }

        py::list result_list, error_list, address_list;
        for (int i = 0; i < kThreads; ++i) {
            result_list.append(results[i].empty() ? py::object(py::none()) : json.attr("loads")(results[i]));
            error_list.append(errors[i].empty() ? py::object(py::none()) : py::str(errors[i]));
            address_list.append(py::int_(seen[i]));
            status |= errors[i].empty() ? 0 : 1;
        }
        py::dict document;
        document["pixels_address"] = py::int_(reinterpret_cast<std::uintptr_t>(pixels.data()));
        document["numpy_addresses"] = address_list;
        document["results"] = result_list;
        document["errors"] = error_list;
        output = json.attr("dumps")(document).cast<std::string>();
    }
    std::cout << output << std::endl;
    return status;
}
