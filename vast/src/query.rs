//! TODO(vast helper): module query
