//! TODO(vast helper): module types
