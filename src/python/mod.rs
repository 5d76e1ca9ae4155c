//! The Python layer, the only place with pyo3 that both binaries share:
//! the interpreter (PEP 587 start-up, `sys.path`, the exit:
//! [`interpreter`]), the lean `site` of one-shot CGI processes ([`site`]),
//! what `--app` names ([`appspec`]) and loading it ([`load`]), the environ
//! `dict` ([`environ`]), and the rest of PEP 3333's application side
//! ([`app`]: `start_response`, iterating the result; [`input`]:
//! `wsgi.input` and `wsgi.file_wrapper`).

pub(crate) mod app;
pub mod appspec;
pub(crate) mod environ;
pub(crate) mod input;
pub mod interpreter;
pub(crate) mod load;
pub(crate) mod site;
pub mod startup;
