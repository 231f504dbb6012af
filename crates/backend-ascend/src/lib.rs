//! The backend op set on Ascend NPUs.
