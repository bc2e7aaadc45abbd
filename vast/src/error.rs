//! TODO(vast helper): module error
