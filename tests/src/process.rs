//! A real `teeproxy` process for black-box tests: spawn, configure, observe, stop.
