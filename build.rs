//! Build script: link libpython with an rpath to the interpreter we were built
//! against (otherwise the loader may pick the distribution's libpython of the
//! same soname, see research/deps.md §1.2), and bake that interpreter's path
//! and version in, so that `PyConfig.program_name` never depends on `PATH`.

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    let config = pyo3_build_config::get();
    let executable = config
        .executable()
        .map(str::to_owned)
        .expect("pyo3 found no interpreter executable: set PYO3_PYTHON to the real python3 (e.g. `pyenv which python3`)");
    println!("cargo:rustc-env=WSGI_GATEWAY_BUILD_PYTHON={executable}");
    println!(
        "cargo:rustc-env=WSGI_GATEWAY_BUILD_PYTHON_VERSION={}.{}",
        config.version().major,
        config.version().minor
    );
    // The full version string (`sys.version`, what `Py_GetVersion()` of
    // the libpython it uses returns): a binary that loads another libpython
    // of the same soname at run time (the loader's fallback when this one
    // cannot be reached) notices and refuses.
    let full = std::process::Command::new(&executable)
        .args(["-c", "import sys; print(sys.version, end='')"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).replace('\n', " "))
        .unwrap_or_default();
    println!("cargo:rustc-env=WSGI_GATEWAY_BUILD_PYTHON_FULL={full}");
    // `_PyDict_NewPresized` (the environ dict made at its size, not grown
    // three times): private, but exported by every libpython 3.9-3.13
    // (checked with `nm -D`); newer ones build without it.
    println!("cargo::rustc-check-cfg=cfg(wsgi_presized_dict)");
    if config.version().major == 3 && config.version().minor <= 13 {
        println!("cargo:rustc-cfg=wsgi_presized_dict");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
