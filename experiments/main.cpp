#include <cstdio>
int main() { std::puts("muonlab"); return 0; }
