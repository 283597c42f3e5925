// MoeConfig through the field table of runtime/config_fields.hpp: Python sets and reads every
// field by name as text, so a new field needs no line here.
#include <string>

#include "runtime/config.hpp"
#include "runtime/config_fields.hpp"
#include "runtime/error.hpp"
#include "runtime/python/bindings.hpp"

namespace moe::python {

namespace {

const ConfigField& field(const std::string& name) {
  const ConfigField* f = find_config_field(name);
  if (f == nullptr) throw Error("no configuration field '" + name + "'");
  return *f;
}

const char* kind_name(FieldKind kind) {
  switch (kind) {
    case FieldKind::shape: return "shape";
    case FieldKind::layer: return "layer";
    case FieldKind::execution: return "execution";
  }
  return "";
}

}  // namespace

void bind_config(py::module_& m) {
  py::class_<MoeConfig>(m, "Config")
      .def(py::init<>())
      .def("set", [](MoeConfig& c, const std::string& name, const std::string& text) { field(name).from_text(c, text); },
           py::arg("name"), py::arg("text"), "Sets a field from its text form (as in a layer case's metadata).")
      .def("get", [](const MoeConfig& c, const std::string& name) { return field(name).to_text(c); }, py::arg("name"))
      .def("validate", &MoeConfig::validate)
      .def("summary", &MoeConfig::summary)
      .def("copy", [](const MoeConfig& c) { return MoeConfig(c); });
  m.def("config_fields", [] {
    py::list fields;
    const MoeConfig defaults;
    for (const ConfigField& f : config_fields()) {
      py::dict d;
      d["name"] = std::string(f.name);
      d["kind"] = kind_name(f.kind);
      d["help"] = std::string(f.help);
      d["option"] = std::string(f.option.empty() ? f.name : f.option);
      d["default"] = f.to_text(defaults);
      fields.append(d);
    }
    return fields;
  }, "Every configuration field: name, kind (shape/layer/execution), help, option name, default text.");
}

}  // namespace moe::python
